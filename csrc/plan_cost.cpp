// PlanCost: the cost semantics of python/halo/plan/search/problem.py over flat arrays.
#include "plan_cost.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace halo {

namespace {

Mask full_mask(int count) { return count >= 64 ? ~Mask{0} : (Mask{1} << count) - 1; }

void check_index(int value, int size, const char* what) {
  if (value < 0 || value >= size) throw std::invalid_argument(std::string("PlanCost: bad index in ") + what);
}

}  // namespace

PlanCost::PlanCost(PlanCostArrays arrays) : a_(std::move(arrays)) {
  n_ = static_cast<int>(a_.model_of.size());
  n_tools_ = static_cast<int>(a_.tool_s.size());
  if (n_ > 64 || n_tools_ > 64 || a_.kind_of.size() > 64) {
    throw std::invalid_argument("PlanCost: at most 64 LLM tasks, 64 tools and 64 workers");
  }
  const size_t n = a_.model_of.size();
  if (a_.parent.size() != n || a_.base_s.size() != n || a_.penalty_s.size() != n || a_.deps.size() != n ||
      a_.tool_deps.size() != n || a_.tool_llm_deps.size() != a_.tool_s.size() ||
      a_.tool_tool_deps.size() != a_.tool_s.size() || a_.kind_of.empty() ||
      a_.initial_model.size() != a_.kind_of.size() ||
      a_.node_order.size() != a_.model_of.size() + a_.tool_s.size()) {
    throw std::invalid_argument("PlanCost: array lengths disagree");
  }
  const int models = static_cast<int>(a_.load_s.size());
  const int kinds = static_cast<int>(a_.kind_speed.size());
  all_mask_ = full_mask(n_);
  all_tools_ = full_mask(n_tools_);
  dep_mask_.assign(n, 0);
  tool_dep_mask_.assign(n, 0);
  children_.assign(n, {});
  llm_tool_children_.assign(n, {});
  tool_children_.assign(a_.tool_s.size(), {});
  tool_tool_children_.assign(a_.tool_s.size(), {});
  for (int t = 0; t < n_; ++t) {
    check_index(a_.model_of[t], models, "model_of");
    if (a_.parent[t] >= 0) check_index(a_.parent[t], t, "parent");  // a parent precedes its child
    for (int d : a_.deps[t]) {
      check_index(d, t, "deps");
      dep_mask_[t] |= Mask{1} << d;
      children_[d].push_back(t);
    }
    for (int d : a_.tool_deps[t]) {
      check_index(d, n_tools_, "tool_deps");
      tool_dep_mask_[t] |= Mask{1} << d;
      tool_children_[d].push_back(t);
    }
  }
  tool_anc_.assign(a_.tool_s.size(), 0);
  for (int a = 0; a < n_tools_; ++a) {
    for (int d : a_.tool_llm_deps[a]) {
      check_index(d, n_, "tool_llm_deps");
      tool_anc_[a] |= Mask{1} << d;
      llm_tool_children_[d].push_back(a);
    }
    for (int d : a_.tool_tool_deps[a]) {
      check_index(d, a, "tool_tool_deps");  // tools are in dependency order
      tool_anc_[a] |= tool_anc_[d];
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

Mask PlanCost::available_tools(Mask done) const {
  Mask mask = 0;
  for (int a = 0; a < n_tools_; ++a) {
    if ((tool_anc_[a] & done) == tool_anc_[a]) mask |= Mask{1} << a;
  }
  return mask;
}

double PlanCost::wave_s(Mask wave) const {
  double total = 0.0;
  for (int a = 0; a < n_tools_; ++a) {
    if (wave >> a & 1) total += a_.tool_s[a];
  }
  return total;
}

Mask PlanCost::kv_parents_pending(Mask done) const {
  Mask mask = 0;
  for (int t = 0; t < n_; ++t) {
    if (!(done >> t & 1) && a_.parent[t] >= 0) mask |= Mask{1} << a_.parent[t];
  }
  return mask;
}

Mask PlanCost::ready(Mask done, Mask tools_done) const {
  Mask mask = 0;
  for (int t = 0; t < n_; ++t) {
    if (!(done >> t & 1) && (dep_mask_[t] & done) == dep_mask_[t] &&
        (tool_dep_mask_[t] & tools_done) == tool_dep_mask_[t]) {
      mask |= Mask{1} << t;
    }
  }
  return mask;
}

void PlanCost::paths(Mask llm, Mask tools, std::vector<double>& down, std::vector<int>& depth,
                     std::vector<double>& tdown, std::vector<int>& tdepth) const {
  down.assign(n_, 0.0);
  depth.assign(n_, 0);
  tdown.assign(n_tools_, 0.0);
  tdepth.assign(n_tools_, 0);
  for (auto it = a_.node_order.rbegin(); it != a_.node_order.rend(); ++it) {
    const int i = it->second;
    double best = 0.0;
    if (it->first) {  // a tool: LLM readers run in later epochs, tool readers in its own
      if (!(tools >> i & 1)) continue;
      int levels = 1;
      for (int c : tool_children_[i]) {
        if (llm >> c & 1) best = std::max(best, down[c]), levels = std::max(levels, 1 + depth[c]);
      }
      for (int b : tool_tool_children_[i]) {
        if (tools >> b & 1) best = std::max(best, tdown[b]), levels = std::max(levels, tdepth[b]);
      }
      tdown[i] = a_.tool_s[i] + best;
      tdepth[i] = levels;
    } else {
      if (!(llm >> i & 1)) continue;
      int levels = 0;
      for (int c : children_[i]) {
        if (llm >> c & 1) best = std::max(best, down[c]), levels = std::max(levels, depth[c]);
      }
      for (int b : llm_tool_children_[i]) {
        if (tools >> b & 1) best = std::max(best, tdown[b]), levels = std::max(levels, tdepth[b]);
      }
      down[i] = a_.base_s[i] / max_speed_ + best;
      depth[i] = 1 + levels;
    }
  }
}

void PlanCost::heads(Mask llm, Mask tools, std::vector<double>& head) const {
  std::vector<double> upto(n_, 0.0), tupto(n_tools_, 0.0);  // chains ending with the node, inclusive
  head.assign(n_, 0.0);
  for (const auto& [is_tool, i] : a_.node_order) {
    double best = 0.0;
    if (is_tool) {
      if (!(tools >> i & 1)) continue;
      for (int d : a_.tool_llm_deps[i]) {
        if (llm >> d & 1) best = std::max(best, upto[d]);
      }
      for (int d : a_.tool_tool_deps[i]) {
        if (tools >> d & 1) best = std::max(best, tupto[d]);
      }
      tupto[i] = a_.tool_s[i] + best;
    } else {
      if (!(llm >> i & 1)) continue;
      for (int d : a_.deps[i]) {
        if (llm >> d & 1) best = std::max(best, upto[d]);
      }
      for (int a = 0; a < n_tools_; ++a) {
        if ((tool_dep_mask_[i] >> a & 1) && (tools >> a & 1)) best = std::max(best, tupto[a]);
      }
      head[i] = best;
      upto[i] = a_.base_s[i] / max_speed_ + best;
    }
  }
}

std::vector<double> PlanCost::bottom_levels() const {
  std::vector<double> down, tdown;
  std::vector<int> depth, tdepth;
  paths(all_mask_, all_tools_, down, depth, tdown, tdepth);
  return down;
}

ScheduleCost PlanCost::evaluate(const Schedule& schedule) const {
  const int W = workers();
  std::vector<int> model(a_.initial_model);
  std::vector<int> ran_on(n_, -1);
  Mask done = 0, tools_done = 0;
  ScheduleCost out;
  auto tool_only = [&](Mask wave) {
    const double tool_s = wave_s(wave);
    out.makespan_s += tool_s + a_.overhead_s;
    out.cost += epoch_cost(nullptr, 0, tool_s);
    ++out.epochs;
  };
  std::vector<int> epoch_model(W);
  std::vector<double> busy(W);
  std::vector<int> used_order;  // workers in order of first use, as the Python evaluator sums them
  std::vector<double> values;
  for (const auto& raw : schedule) {
    Mask wave = available_tools(done) & ~tools_done;
    Mask need = 0;
    for (const auto& [t, w] : raw) {
      check_index(t, n_, "schedule task");
      check_index(w, W, "schedule worker");
      need |= tool_dep_mask_[t];
    }
    if (raw.empty() || (need & ~tools_done)) {
      if (need & ~tools_done & ~wave) throw std::invalid_argument("a task runs before its tool inputs");
      if (wave) {
        tool_only(wave);
        tools_done |= wave;
        wave = 0;
      }
      if (raw.empty()) continue;
    }
    std::fill(epoch_model.begin(), epoch_model.end(), -2);
    std::fill(busy.begin(), busy.end(), 0.0);
    used_order.clear();
    for (const auto& [t, w] : raw) {
      if (ran_on[t] >= 0) throw std::invalid_argument("task scheduled twice");
      for (int d : a_.deps[t]) {
        if (ran_on[d] < 0) throw std::invalid_argument("task runs before its dependencies");
      }
      const int m = a_.model_of[t];
      if (epoch_model[w] == -2) {
        epoch_model[w] = m;
        used_order.push_back(w);
        if (model[w] != m) busy[w] += a_.load_s[m];
      } else if (epoch_model[w] != m) {
        throw std::invalid_argument("worker runs two models in one epoch");
      }
      const int p = a_.parent[t];
      busy[w] += task_time(t, a_.kind_speed[a_.kind_of[w]], p >= 0 && ran_on[p] == w);
    }
    for (const auto& [t, w] : raw) {
      ran_on[t] = w;
      done |= Mask{1} << t;
    }
    values.clear();
    for (int w : used_order) {
      model[w] = epoch_model[w];
      values.push_back(busy[w]);
    }
    const double tool_s = wave_s(wave);
    tools_done |= wave;
    out.cost += epoch_cost(values.data(), static_cast<int>(values.size()), tool_s);
    double longest = 0.0;
    for (double b : values) longest = std::max(longest, b), out.summed_load_s += b;
    out.makespan_s += std::max(longest, tool_s) + a_.overhead_s;
    ++out.epochs;
  }
  if (done != all_mask_) throw std::invalid_argument("schedule leaves tasks unscheduled");
  if (tools_done != all_tools_) tool_only(all_tools_ & ~tools_done);
  return out;
}

}  // namespace halo
