// PlanCost and PlanMasks: the cost semantics of python/halo/plan/search/problem.py over flat arrays.
#include "plan_cost.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace halo {

namespace {

void check_index(int value, int size, const char* what) {
  if (value < 0 || value >= size) throw std::invalid_argument(std::string("PlanCost: bad index in ") + what);
}

}  // namespace

PlanCost::PlanCost(PlanCostArrays arrays) : a_(std::move(arrays)) {
  n_ = static_cast<int>(a_.model_of.size());
  n_tools_ = static_cast<int>(a_.tool_s.size());
  const size_t n = a_.model_of.size();
  if (a_.parent.size() != n || a_.base_s.size() != n || a_.penalty_s.size() != n || a_.deps.size() != n ||
      a_.tool_deps.size() != n || a_.tool_llm_deps.size() != a_.tool_s.size() ||
      a_.tool_tool_deps.size() != a_.tool_s.size() || a_.kind_of.empty() ||
      a_.initial_model.size() != a_.kind_of.size() ||
      a_.node_order.size() != a_.model_of.size() + a_.tool_s.size()) {
    throw std::invalid_argument("PlanCost: array lengths disagree");
  }
  if (a_.split_ways.empty()) {  // no splits: every task runs whole
    a_.split_ways.assign(n, {});
    a_.split_base_s.assign(n, {});
    a_.split_penalty_s.assign(n, {});
  }
  if (a_.span_lb_s.empty()) a_.span_lb_s = a_.base_s;
  if (a_.work_lb_s.empty()) a_.work_lb_s = a_.base_s;
  if (a_.split_ways.size() != n || a_.split_base_s.size() != n || a_.split_penalty_s.size() != n ||
      a_.span_lb_s.size() != n || a_.work_lb_s.size() != n) {
    throw std::invalid_argument("PlanCost: split array lengths disagree");
  }
  for (size_t t = 0; t < n; ++t) {
    if (a_.split_base_s[t].size() != a_.split_ways[t].size() ||
        a_.split_penalty_s[t].size() != a_.split_ways[t].size()) {
      throw std::invalid_argument("PlanCost: split array lengths disagree");
    }
    for (int k : a_.split_ways[t]) {
      if (k < 2) throw std::invalid_argument("PlanCost: a split has at least 2 ways");
    }
  }
  const int models = static_cast<int>(a_.load_s.size());
  const int kinds = static_cast<int>(a_.kind_speed.size());
  children_.assign(n, {});
  llm_tool_children_.assign(n, {});
  tool_children_.assign(a_.tool_s.size(), {});
  tool_tool_children_.assign(a_.tool_s.size(), {});
  for (int t = 0; t < n_; ++t) {
    check_index(a_.model_of[t], models, "model_of");
    if (a_.parent[t] >= 0) check_index(a_.parent[t], t, "parent");  // a parent precedes its child
    for (int d : a_.deps[t]) {
      check_index(d, t, "deps");
      children_[d].push_back(t);
    }
    for (int d : a_.tool_deps[t]) {
      check_index(d, n_tools_, "tool_deps");
      tool_children_[d].push_back(t);
    }
  }
  for (int a = 0; a < n_tools_; ++a) {
    for (int d : a_.tool_llm_deps[a]) {
      check_index(d, n_, "tool_llm_deps");
      llm_tool_children_[d].push_back(a);
    }
    for (int d : a_.tool_tool_deps[a]) {
      check_index(d, a, "tool_tool_deps");  // tools are in dependency order
      tool_tool_children_[d].push_back(a);
    }
  }
  for (int w = 0; w < workers(); ++w) {
    check_index(a_.kind_of[w], kinds, "kind_of");
    if (a_.initial_model[w] != -1) check_index(a_.initial_model[w], models, "initial_model");
  }
  for (const auto& [is_tool, i] : a_.node_order) check_index(i, is_tool ? n_tools_ : n_, "node_order");
  max_speed_ = 0.0;
  for (int w = 0; w < workers(); ++w) max_speed_ = std::max(max_speed_, a_.kind_speed[a_.kind_of[w]]);
}

double PlanCost::epoch_cost(const double* busy, int count, double tool_s) const {
  double longest = 0.0, total = 0.0;
  for (int i = 0; i < count; ++i) {
    longest = std::max(longest, busy[i]);
    total += busy[i];
  }
  return a_.w_makespan * (std::max(longest, tool_s) + a_.overhead_s) + a_.w_load * total;
}

template <class M>
PlanMasks<M>::PlanMasks(const PlanCost& pc)
    : pc_(pc), all_tasks_(M::full(pc.n())), all_tools_(M::full(pc.n_tools())) {
  const PlanCostArrays& a = pc.arrays();
  dep_mask_.assign(pc.n(), M(pc.n()));
  tool_dep_mask_.assign(pc.n(), M(pc.n_tools()));
  for (int t = 0; t < pc.n(); ++t) {
    for (int d : a.deps[t]) dep_mask_[t].set(d);
    for (int d : a.tool_deps[t]) tool_dep_mask_[t].set(d);
  }
  tool_anc_.assign(pc.n_tools(), M(pc.n()));
  for (int x = 0; x < pc.n_tools(); ++x) {
    for (int d : a.tool_llm_deps[x]) tool_anc_[x].set(d);
    for (int d : a.tool_tool_deps[x]) tool_anc_[x] |= tool_anc_[d];
  }
}

template <class M>
M PlanMasks<M>::available_tools(const M& done) const {
  M mask(pc_.n_tools());
  for (int x = 0; x < pc_.n_tools(); ++x) {
    if (tool_anc_[x].subset_of(done)) mask.set(x);
  }
  return mask;
}

template <class M>
double PlanMasks<M>::wave_s(const M& wave) const {
  double total = 0.0;
  for (int x = 0; x < pc_.n_tools(); ++x) {
    if (wave.test(x)) total += pc_.arrays().tool_s[x];
  }
  return total;
}

template <class M>
M PlanMasks<M>::kv_parents_pending(const M& done) const {
  M mask(pc_.n());
  const std::vector<int>& parent = pc_.arrays().parent;
  for (int t = 0; t < pc_.n(); ++t) {
    if (!done.test(t) && parent[t] >= 0) mask.set(parent[t]);
  }
  return mask;
}

template <class M>
void PlanMasks<M>::ready(const M& done, const M& tools_done, std::vector<int>& out) const {
  out.clear();
  for (int t = 0; t < pc_.n(); ++t) {
    if (!done.test(t) && dep_mask_[t].subset_of(done) && tool_dep_mask_[t].subset_of(tools_done)) out.push_back(t);
  }
}

template <class M>
void PlanMasks<M>::paths(const M& llm, const M& tools, std::vector<double>& down, std::vector<int>& depth,
                         std::vector<double>& tdown, std::vector<int>& tdepth) const {
  const PlanCostArrays& a = pc_.arrays();
  down.assign(pc_.n(), 0.0);
  depth.assign(pc_.n(), 0);
  tdown.assign(pc_.n_tools(), 0.0);
  tdepth.assign(pc_.n_tools(), 0);
  for (auto it = a.node_order.rbegin(); it != a.node_order.rend(); ++it) {
    const int i = it->second;
    double best = 0.0;
    if (it->first) {  // a tool: LLM readers run in later epochs, tool readers in its own
      if (!tools.test(i)) continue;
      int levels = 1;
      for (int c : pc_.tool_children()[i]) {
        if (llm.test(c)) best = std::max(best, down[c]), levels = std::max(levels, 1 + depth[c]);
      }
      for (int b : pc_.tool_tool_children()[i]) {
        if (tools.test(b)) best = std::max(best, tdown[b]), levels = std::max(levels, tdepth[b]);
      }
      tdown[i] = a.tool_s[i] + best;
      tdepth[i] = levels;
    } else {
      if (!llm.test(i)) continue;
      int levels = 0;
      for (int c : pc_.children()[i]) {
        if (llm.test(c)) best = std::max(best, down[c]), levels = std::max(levels, depth[c]);
      }
      for (int b : pc_.llm_tool_children()[i]) {
        if (tools.test(b)) best = std::max(best, tdown[b]), levels = std::max(levels, tdepth[b]);
      }
      down[i] = a.span_lb_s[i] / pc_.max_speed() + best;
      depth[i] = 1 + levels;
    }
  }
}

template <class M>
void PlanMasks<M>::heads(const M& llm, const M& tools, std::vector<double>& head) const {
  const PlanCostArrays& a = pc_.arrays();
  std::vector<double> upto(pc_.n(), 0.0), tupto(pc_.n_tools(), 0.0);  // chains ending with the node, inclusive
  head.assign(pc_.n(), 0.0);
  for (const auto& [is_tool, i] : a.node_order) {
    double best = 0.0;
    if (is_tool) {
      if (!tools.test(i)) continue;
      for (int d : a.tool_llm_deps[i]) {
        if (llm.test(d)) best = std::max(best, upto[d]);
      }
      for (int d : a.tool_tool_deps[i]) {
        if (tools.test(d)) best = std::max(best, tupto[d]);
      }
      tupto[i] = a.tool_s[i] + best;
    } else {
      if (!llm.test(i)) continue;
      for (int d : a.deps[i]) {
        if (llm.test(d)) best = std::max(best, upto[d]);
      }
      for (int d : a.tool_deps[i]) {
        if (tools.test(d)) best = std::max(best, tupto[d]);
      }
      head[i] = best;
      upto[i] = a.span_lb_s[i] / pc_.max_speed() + best;
    }
  }
}

template <class M>
std::vector<double> PlanMasks<M>::bottom_levels() const {
  std::vector<double> down, tdown;
  std::vector<int> depth, tdepth;
  paths(all_tasks_, all_tools_, down, depth, tdown, tdepth);
  return down;
}

template class PlanMasks<FixedMask<1>>;
template class PlanMasks<FixedMask<2>>;
template class PlanMasks<FixedMask<4>>;
template class PlanMasks<MaskN>;

}  // namespace halo
