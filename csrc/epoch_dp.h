// The epoch DP's native search: a step-for-step mirror of python/halo/plan/search/dp.py (its
// module docstring states the states, actions, bound, phases and heuristic). Python stays the
// reference; a test checks both return the same optimum and the same proof.
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
