// The epoch DP's search: depth-first branch-and-bound over canonical plan states with memoisation and
// worker symmetry, in two phases (exact, then restricted heuristic rounds). The one production search
// (python/halo/plan/search/dp.py calls it; its module docstring states the states, actions, bound,
// phases and heuristic). tests/plan/reference_dp.py keeps a Python transcription, step for step, as
// the test reference. Any number of LLM tasks, tools and workers: masks are one word up to 64 tasks
// and 64 tools, inline words up to 256, a word vector beyond (task_mask.h).
#pragma once

#include <cstdint>
#include <optional>

#include "plan_cost.h"

namespace halo {

struct DpOptions {
  int64_t state_budget = 200000;  // states expanded per phase
  double time_limit_s = -1.0;     // < 0: none; phase 1 gets half
  int64_t max_actions = 200000;   // per state in phase 1; hitting it voids the proof
  int heuristic_width = 6;
  int64_t heuristic_actions = 64;
};

struct DpResult {
  std::optional<Schedule> schedule;  // epochs of (task, worker); none: keep the incumbent plan
  int64_t states = 0;
  bool optimal = false;
  double cost = 0.0;  // the search's own total for `schedule` (the caller re-prices it)
};

// Runs both phases from the initial state; `incumbent_cost` is a known plan's cost (the greedy's).
DpResult search_epoch_dp(const PlanCost& cost, double incumbent_cost, const DpOptions& options);

}  // namespace halo
