"""Optimal transport: cosine costs, log-domain Sinkhorn, and SOT's push-pull weights.

`cosine_costs` builds dense or kNN-sparse (`KnnCost`) costs with FAISS; `sinkhorn_log` solves
entropic OT in the KL(P | a x b) convention and returns dual potentials; `solve_push_pull` finds
the pool weights that pull towards the safe anchor and push away from the harmful reference.
The solver imports without FAISS: only building costs needs it.

Modules: `costs`, `operators` (blockwise soft-min reductions over a cost), `sinkhorn`,
`push_pull` (the objective and its solve), `dca` (the solve's outer iteration).
"""
from sot_core.ot.costs import KnnCost, cosine_costs
from sot_core.ot.push_pull import PushPullResult, solve_push_pull
from sot_core.ot.sinkhorn import SinkhornResult, sinkhorn_log

__all__ = ["KnnCost", "PushPullResult", "SinkhornResult", "cosine_costs", "sinkhorn_log", "solve_push_pull"]
