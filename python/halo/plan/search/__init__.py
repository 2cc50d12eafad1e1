"""Plan search: which LLM tasks run in which epoch on which worker, under one explicit cost model.

from halo.plan.search import PlanProblem, LLMTask, ToolTask, Worker, plan_dp
plan = plan_dp(problem)        # the native search (halo._core); or plan_greedy / solve_milp(problem).plan
print(plan.explain())

`problem.py` states the cost semantics; `cost_table.py` flattens them; `execution_plan.evaluate`
prices any schedule; `dp.py` (the epoch DP, searched natively through `native.py`), `greedy.py`,
`milp.py` (an oracle for tests) and `baselines.py` produce schedules.
"""

from halo.plan.search.baselines import operator_at_a_time, random_schedule, round_robin, serial
from halo.plan.search.cost_table import CostTable
from halo.plan.search.dp import plan_dp
from halo.plan.search.execution_plan import Epoch, ExecutionPlan, Placement, evaluate
from halo.plan.search.greedy import plan_greedy
from halo.plan.search.milp import MilpResult, solve_milp
from halo.plan.search.problem import CostCurves, LLMTask, PlanProblem, Split, ToolTask, Worker

__all__ = [
    "CostCurves",
    "CostTable",
    "Epoch",
    "ExecutionPlan",
    "LLMTask",
    "MilpResult",
    "PlanProblem",
    "Placement",
    "ToolTask",
    "Split",
    "Worker",
    "evaluate",
    "operator_at_a_time",
    "plan_dp",
    "plan_greedy",
    "random_schedule",
    "round_robin",
    "serial",
    "solve_milp",
]
