// The plan problem's cost semantics (python/halo/plan/search/problem.py, rules 1-6) as the epoch DP
// (epoch_dp.cpp) reads them. `PlanCost` holds a Python CostTable's flat arrays, checked, with the
// dependency graph both ways and the per-epoch terms; `PlanMasks<M>` adds the queries over sets of
// tasks and tools, for either mask type of task_mask.h. Pricing a whole plan stays in Python
// (`execution_plan.evaluate`, which also builds the explained epochs); this is the search's view.
// LLM tasks and tools are indexed in topological order, each in its own index space.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "task_mask.h"

namespace halo {

using Schedule = std::vector<std::vector<std::pair<int, int>>>;  // epochs of (task, worker)

struct PlanCostArrays {
  std::vector<int> model_of;       // per LLM task
  std::vector<int> parent;         // kv parent task or -1
  std::vector<double> base_s;      // time with its parent's KV local (or no parent), speed 1
  std::vector<double> penalty_s;   // extra time with the parent's KV elsewhere, speed 1
  std::vector<std::vector<int>> deps;       // LLM inputs of each LLM task
  std::vector<std::vector<int>> tool_deps;  // tool inputs of each LLM task
  std::vector<double> tool_s;               // per tool: CPU seconds on the whole pool
  std::vector<std::vector<int>> tool_llm_deps;
  std::vector<std::vector<int>> tool_tool_deps;
  std::vector<std::pair<bool, int>> node_order;  // (is_tool, index) in one dependency order
  std::vector<double> load_s;                    // per model
  std::vector<int> kind_of;                      // per worker
  std::vector<double> kind_speed;                // per kind
  std::vector<int> initial_model;                // per worker, -1 = nothing loaded
  double overhead_s = 0.0;
  double w_makespan = 1.0;
  double w_load = 0.0;
  // Data-parallel splits (problem.py, rule 3b): per task, the degrees k >= 2 it may be split into and,
  // per degree, one share's base and penalty times at speed 1; and per task the least span and total
  // work over all its placements (whole or split), which the bounds read. Empty: no splits.
  std::vector<std::vector<int>> split_ways;
  std::vector<std::vector<double>> split_base_s;
  std::vector<std::vector<double>> split_penalty_s;
  std::vector<double> span_lb_s;
  std::vector<double> work_lb_s;
};

class PlanCost {
 public:
  explicit PlanCost(PlanCostArrays arrays);  // throws std::invalid_argument on inconsistent arrays

  int n() const { return n_; }
  int n_tools() const { return n_tools_; }
  int workers() const { return static_cast<int>(a_.kind_of.size()); }
  const PlanCostArrays& arrays() const { return a_; }
  double max_speed() const { return max_speed_; }
  // Readers of each node: LLM task -> LLM tasks, LLM task -> tools, tool -> LLM tasks, tool -> tools.
  const std::vector<std::vector<int>>& children() const { return children_; }
  const std::vector<std::vector<int>>& llm_tool_children() const { return llm_tool_children_; }
  const std::vector<std::vector<int>>& tool_children() const { return tool_children_; }
  const std::vector<std::vector<int>>& tool_tool_children() const { return tool_tool_children_; }

  // Seconds task t takes on a worker of `speed` (rule 3).
  double task_time(int t, double speed, bool parent_local) const {
    const double s = a_.parent[t] < 0 || parent_local ? a_.base_s[t] : a_.base_s[t] + a_.penalty_s[t];
    return s / speed;
  }
  // Seconds one share of task t's split number s takes on a worker of `speed` (rule 3b).
  double share_time(int t, int s, double speed, bool parent_local) const {
    const double base = a_.split_base_s[t][s];
    return (a_.parent[t] < 0 || parent_local ? base : base + a_.split_penalty_s[t][s]) / speed;
  }
  // Weighted cost of one epoch from the busy times of its used workers and its tool wave (rule 6).
  double epoch_cost(const double* busy, int count, double tool_s) const;

 private:
  PlanCostArrays a_;
  int n_ = 0;
  int n_tools_ = 0;
  double max_speed_ = 1.0;
  std::vector<std::vector<int>> children_, llm_tool_children_, tool_children_, tool_tool_children_;
};

// The search's queries over masks of LLM tasks (`n` bits) and tools (`n_tools` bits).
template <class M>
class PlanMasks {
 public:
  explicit PlanMasks(const PlanCost& pc);

  const M& all_tasks() const { return all_tasks_; }
  const M& all_tools() const { return all_tools_; }
  M no_tasks() const { return M(pc_.n()); }
  M no_tools() const { return M(pc_.n_tools()); }

  M available_tools(const M& done) const;  // tools whose inputs are complete (rule 5)
  double wave_s(const M& wave) const;
  M kv_parents_pending(const M& done) const;  // tasks whose KV still matters
  // Ready LLM tasks, in index order: not done, LLM inputs done, tool inputs run in an earlier epoch.
  void ready(const M& done, const M& tools_done, std::vector<int>& out) const;
  // Longest remaining paths (time, epochs) per LLM task and per tool within the masks.
  void paths(const M& llm, const M& tools, std::vector<double>& down, std::vector<int>& depth,
             std::vector<double>& tdown, std::vector<int>& tdepth) const;
  // Per LLM task, the longest chain of remaining work that must run in epochs before its own.
  void heads(const M& llm, const M& tools, std::vector<double>& head) const;
  std::vector<double> bottom_levels() const;

 private:
  const PlanCost& pc_;
  M all_tasks_, all_tools_;
  std::vector<M> dep_mask_;       // per LLM task: its LLM inputs
  std::vector<M> tool_dep_mask_;  // per LLM task: its tool inputs
  std::vector<M> tool_anc_;       // per tool: LLM tasks reached through tool-only paths
};

extern template class PlanMasks<FixedMask<1>>;
extern template class PlanMasks<FixedMask<2>>;
extern template class PlanMasks<FixedMask<4>>;
extern template class PlanMasks<MaskN>;

}  // namespace halo
