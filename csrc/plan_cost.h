// PlanCost: the plan problem's cost semantics (python/halo/plan/search/problem.py, rules 1-6) over
// flat arrays, built from a Python CostTable. It prices whole schedules (the native twin of
// `execution_plan.evaluate`) and gives the epoch DP (epoch_dp.cpp) its inner-loop terms.
// LLM tasks and tools are indexed in topological order, each in its own index space; masks are one
// 64-bit word, so a problem has at most 64 LLM tasks and 64 tools.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace halo {

using Mask = uint64_t;
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
};

struct ScheduleCost {
  double cost = 0.0;
  double makespan_s = 0.0;
  double summed_load_s = 0.0;
  int epochs = 0;  // including tool-only epochs
};

class PlanCost {
 public:
  explicit PlanCost(PlanCostArrays arrays);  // throws std::invalid_argument on inconsistent arrays

  int n() const { return n_; }
  int n_tools() const { return n_tools_; }
  int workers() const { return static_cast<int>(a_.kind_of.size()); }
  Mask all_mask() const { return all_mask_; }
  Mask all_tools() const { return all_tools_; }
  const PlanCostArrays& arrays() const { return a_; }
  Mask dep_mask(int t) const { return dep_mask_[t]; }
  Mask tool_dep_mask(int t) const { return tool_dep_mask_[t]; }
  double max_speed() const { return max_speed_; }

  // Seconds task t takes on a worker of `speed` (rule 3).
  double task_time(int t, double speed, bool parent_local) const {
    const double s = a_.parent[t] < 0 || parent_local ? a_.base_s[t] : a_.base_s[t] + a_.penalty_s[t];
    return s / speed;
  }
  // Weighted cost of one epoch from the busy times of its used workers and its tool wave (rule 6).
  double epoch_cost(const double* busy, int count, double tool_s) const;
  Mask available_tools(Mask done) const;  // tools whose inputs are complete (rule 5)
  double wave_s(Mask wave) const;
  Mask kv_parents_pending(Mask done) const;  // tasks whose KV still matters
  Mask ready(Mask done, Mask tools_done) const;
  // Longest remaining paths (time, epochs) per LLM task and per tool within the masks.
  void paths(Mask llm, Mask tools, std::vector<double>& down, std::vector<int>& depth, std::vector<double>& tdown,
             std::vector<int>& tdepth) const;
  // Per LLM task, the longest chain of remaining work that must run in epochs before its own.
  void heads(Mask llm, Mask tools, std::vector<double>& head) const;
  std::vector<double> bottom_levels() const;
  // Prices a schedule exactly as `execution_plan.evaluate` does; throws std::invalid_argument if it
  // breaks a plan rule.
  ScheduleCost evaluate(const Schedule& schedule) const;

 private:
  PlanCostArrays a_;
  int n_ = 0;
  int n_tools_ = 0;
  Mask all_mask_ = 0;
  Mask all_tools_ = 0;
  double max_speed_ = 1.0;
  std::vector<Mask> dep_mask_;
  std::vector<Mask> tool_dep_mask_;
  std::vector<Mask> tool_anc_;  // LLM tasks reached through tool-only paths
  std::vector<std::vector<int>> children_, llm_tool_children_, tool_children_, tool_tool_children_;
};

}  // namespace halo
