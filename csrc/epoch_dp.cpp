// The epoch DP (see epoch_dp.h): one template over the mask type (task_mask.h), so problems of any
// size share one search; tests/plan/reference_dp.py mirrors it step for step.
#include "epoch_dp.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

namespace halo {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

template <class M>
struct Slot {
  int kind;
  int model;  // -1: nothing loaded
  M kv;
  bool operator<(const Slot& o) const {
    if (kind != o.kind) return kind < o.kind;
    if (model != o.model) return model < o.model;
    return kv < o.kv;
  }
  bool operator==(const Slot& o) const { return kind == o.kind && model == o.model && kv == o.kv; }
};

template <class M>
struct State {
  M done;
  M tools;
  std::vector<Slot<M>> slots;  // canonical: sorted
  bool operator==(const State& o) const { return done == o.done && tools == o.tools && slots == o.slots; }
};

template <class M>
struct StateHash {
  size_t operator()(const State<M>& s) const {
    uint64_t h = s.done.hash() * 0x9E3779B97F4A7C15ULL ^ (s.tools.hash() + 0x7F4A7C159E3779B9ULL);
    for (const Slot<M>& slot : s.slots) {
      h ^= (slot.kv.hash() + (static_cast<uint64_t>(slot.kind) << 40) + static_cast<uint64_t>(slot.model + 1)) +
           0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h ^ (h >> 29));
  }
};

template <class M>
struct MaskPairHash {
  size_t operator()(const std::pair<M, M>& k) const {
    return static_cast<size_t>(k.first.hash() * 0x9E3779B97F4A7C15ULL ^ (k.second.hash() + 0xC2B2AE3D27D4EB4FULL));
  }
};

using Action = std::vector<std::pair<int, int>>;  // (task, canonical slot); empty: tool-only epoch

template <class M>
struct Move {
  double est;
  double cost;
  Action action;
  State<M> next;
};

struct Bound {
  double value, work, span;
  int levels;
  std::vector<double> loaded;  // per model: the span it forces were it resident nowhere (dp.py's bound)
};

struct Stop {};

// The per-epoch enumeration context of `Search::actions` (one object, not a long signature).
template <class M>
struct EpochBuilder {
  const State<M>* state = nullptr;
  std::vector<int> ready;
  std::vector<M> rest_after;
  std::vector<double> speeds, busy;
  std::vector<int> epoch_model;
  Action chosen;
  std::vector<Move<M>> out;
  M wave, future_tools, notdone;
  double wave_s = 0.0, limit = 0.0;
};

template <class M>
class Search {
 public:
  using St = State<M>;
  using Path = std::vector<std::pair<St, Action>>;

  Search(const PlanCost& pc, const PlanMasks<M>& pm, const DpOptions& options,
         std::optional<std::chrono::steady_clock::time_point> deadline, bool restricted)
      : pc_(pc),
        pm_(pm),
        a_(pc.arrays()),
        state_budget_(options.state_budget),
        deadline_(deadline),
        restricted_(restricted),
        max_actions_(restricted ? options.heuristic_actions : options.max_actions),
        width_(options.heuristic_width),
        priority_(pm.bottom_levels()) {}

  double incumbent_cost = kInf;
  std::optional<Path> incumbent_path;
  int64_t states = 0;
  bool exhaustive = true;

  St root() const { return canonical(pm_.no_tasks(), pm_.no_tools(), initial_slots(), nullptr); }

  bool has_exact(const St& s) const { return exact_.count(s) > 0; }

  St canonical(const M& done, const M& tools, const std::vector<Slot<M>>& slots, std::vector<int>* perm_out) const {
    const M keep = pm_.kv_parents_pending(done);
    std::vector<Slot<M>> trimmed(slots);
    for (Slot<M>& s : trimmed) s.kv &= keep;
    std::vector<int> perm(trimmed.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int>(i);
    std::stable_sort(perm.begin(), perm.end(), [&](int x, int y) { return trimmed[x] < trimmed[y]; });
    St s{done, tools, {}};
    for (int i : perm) s.slots.push_back(trimmed[i]);
    if (perm_out) *perm_out = std::move(perm);
    return s;
  }

  // Invariant: returns the exact least cost-to-go of `state` if below `limit`, else a lower bound >= limit.
  double solve(const St& state, double limit) {
    if (finished(state)) {
      offer(nullptr);
      return 0.0;
    }
    if (auto it = exact_.find(state); it != exact_.end()) {
      if (it->second < limit) {
        auto tail = policy_walk(state);
        offer(&tail);
      }
      return it->second;
    }
    double lb = bound(state);
    if (auto it = lower_.find(state); it != lower_.end()) lb = std::max(lb, it->second);
    if (lb >= limit) return lb;
    ++states;
    if (states > state_budget_ ||
        (deadline_ && states % 64 == 0 && std::chrono::steady_clock::now() > *deadline_)) {
      throw Stop{};
    }
    double best = kInf;
    const Move<M>* best_move = nullptr;
    std::vector<Move<M>> moves = actions(state, limit);
    for (const Move<M>& mv : moves) {
      const double cap = std::min(limit, best);
      if (mv.est >= cap) break;
      stack_.emplace_back(state, mv.action);
      g_ += mv.cost;
      const double sub = solve(mv.next, cap - mv.cost);
      g_ -= mv.cost;
      stack_.pop_back();
      if ((finished(mv.next) || has_exact(mv.next)) && mv.cost + sub < best) {
        best = mv.cost + sub;
        best_move = &mv;
      }
    }
    if (best < limit && best_move != nullptr) {
      exact_[state] = best;
      policy_[state] = {best_move->action, best_move->next};
      return best;
    }
    lower_[state] = std::max(lb, limit);
    return std::max(lb, limit);
  }

  Path policy_walk(St state) const {
    Path path;
    while (!finished(state)) {
      const auto& [action, next] = policy_.at(state);
      path.emplace_back(state, action);
      state = next;
    }
    return path;
  }

  Schedule replay(const Path& path) const {
    M done = pm_.no_tasks(), tools = pm_.no_tools();
    std::vector<Slot<M>> actual = initial_slots();
    Schedule epochs;
    std::vector<int> perm;
    for (const auto& [expected, action] : path) {
      const St state = canonical(done, tools, actual, &perm);
      if (!(state == expected)) throw std::logic_error("epoch DP: replay diverged from the search");
      tools = pm_.available_tools(done);
      std::vector<std::pair<int, int>> epoch;
      for (const auto& [t, j] : action) {
        const int w = perm[j];
        actual[w].model = a_.model_of[t];
        actual[w].kv.set(t);
        done.set(t);
        epoch.emplace_back(t, w);
      }
      epochs.push_back(std::move(epoch));
    }
    return epochs;
  }

 private:
  bool finished(const St& s) const { return s.done == pm_.all_tasks() && s.tools == pm_.all_tools(); }

  std::vector<Slot<M>> initial_slots() const {
    std::vector<Slot<M>> slots;
    for (int w = 0; w < pc_.workers(); ++w) slots.push_back({a_.kind_of[w], a_.initial_model[w], pm_.no_tasks()});
    return slots;
  }

  // The busy times of the workers used this epoch, in worker order (into a buffer kept for reuse).
  const std::vector<double>& used_busy(const EpochBuilder<M>& b) {
    used_.clear();
    for (size_t j = 0; j < b.epoch_model.size(); ++j) {
      if (b.epoch_model[j] != -2) used_.push_back(b.busy[j]);
    }
    return used_;
  }

  void offer(const Path* tail) {
    const double total = g_ + (tail && !tail->empty() ? exact_.at(tail->front().first) : 0.0);
    if (total < incumbent_cost) {
      incumbent_cost = total;
      Path path(stack_);
      if (tail) path.insert(path.end(), tail->begin(), tail->end());
      incumbent_path = std::move(path);
    }
  }

  std::vector<Move<M>> actions(const St& state, double limit) {
    EpochBuilder<M> b;
    b.state = &state;
    b.limit = limit;
    pm_.ready(state.done, state.tools, b.ready);
    std::stable_sort(b.ready.begin(), b.ready.end(), [&](int x, int y) { return priority_[x] > priority_[y]; });
    if (restricted_ && static_cast<int>(b.ready.size()) > width_) b.ready.resize(width_);
    b.wave = pm_.available_tools(state.done) - state.tools;
    b.wave_s = pm_.wave_s(b.wave);
    b.future_tools = pm_.all_tools() - state.tools - b.wave;
    b.notdone = pm_.all_tasks() - state.done;
    const size_t W = state.slots.size();
    for (const Slot<M>& s : state.slots) b.speeds.push_back(a_.kind_speed[s.kind]);
    b.busy.assign(W, 0.0);
    b.epoch_model.assign(W, -2);
    if (b.wave.any()) emit(b);
    b.rest_after.assign(b.ready.size() + 1, pm_.no_tasks());
    for (int i = static_cast<int>(b.ready.size()) - 1; i >= 0; --i) {
      b.rest_after[i] = b.rest_after[i + 1];
      b.rest_after[i].set(b.ready[i]);
    }
    rec(b, 0, pm_.no_tasks());
    std::stable_sort(b.out.begin(), b.out.end(), [](const Move<M>& x, const Move<M>& y) { return x.est < y.est; });
    return std::move(b.out);
  }

  void rec(EpochBuilder<M>& b, size_t i, const M& assigned) {
    if (static_cast<int64_t>(b.out.size()) >= max_actions_) {
      exhaustive = false;
      return;
    }
    // one state's epochs can be many: the time limit is checked here too
    if (deadline_ && ++steps_ % 4096 == 0 && std::chrono::steady_clock::now() > *deadline_) throw Stop{};
    const std::vector<Slot<M>>& slots = b.state->slots;
    const size_t W = slots.size();
    if (!b.chosen.empty()) {
      const std::vector<double>& used = used_busy(b);
      const M remaining = b.notdone - assigned - b.rest_after[i];
      const double partial = pc_.epoch_cost(used.data(), static_cast<int>(used.size()), b.wave_s) +
                             bound_of(remaining, b.future_tools).value;
      if (partial >= b.limit) return;
    }
    if (i == b.ready.size()) {
      if (!b.chosen.empty() && !(restricted_ && leaves_idle(b, assigned))) emit(b);
      return;
    }
    const int t = b.ready[i];
    const int m = a_.model_of[t];
    const int p = a_.parent[t];
    std::vector<const Slot<M>*> seen;
    bool loading_tried = false;
    for (size_t j = 0; j < W; ++j) {
      if (b.epoch_model[j] != -2 && b.epoch_model[j] != m) continue;
      const bool fresh = b.epoch_model[j] == -2;
      const bool holds_parent = p >= 0 && slots[j].kv.test(p);
      if (fresh) {
        if (std::any_of(seen.begin(), seen.end(), [&](const Slot<M>* s) { return *s == slots[j]; })) continue;
        seen.push_back(&slots[j]);
        if (restricted_ && slots[j].model != m && !holds_parent) {
          if (loading_tried) continue;
          loading_tried = true;
        }
      }
      double add = fresh && slots[j].model != m ? a_.load_s[m] : 0.0;
      add += pc_.task_time(t, b.speeds[j], holds_parent);
      const double old_busy = b.busy[j];
      const int old_model = b.epoch_model[j];
      b.busy[j] += add;
      b.epoch_model[j] = m;
      b.chosen.emplace_back(t, static_cast<int>(j));
      M with_t = assigned;
      with_t.set(t);
      rec(b, i + 1, with_t);
      b.chosen.pop_back();
      b.busy[j] = old_busy;
      b.epoch_model[j] = old_model;
    }
    // data-parallel splits: even shares over the k preferred fresh slots (holding the parent's KV,
    // then holding the model, then the rest; slot order within each)
    const std::vector<int>& ways = a_.split_ways[t];
    if (!ways.empty()) {
      std::vector<int> fresh;
      for (int rank = 0; rank < 3; ++rank) {
        for (size_t j = 0; j < W; ++j) {
          if (b.epoch_model[j] != -2) continue;
          const int r = p >= 0 && slots[j].kv.test(p) ? 0 : slots[j].model == m ? 1 : 2;
          if (r == rank) fresh.push_back(static_cast<int>(j));
        }
      }
      for (size_t s = 0; s < ways.size(); ++s) {
        const size_t k = static_cast<size_t>(ways[s]);
        if (k > fresh.size()) continue;
        for (size_t x = 0; x < k; ++x) {
          const int j = fresh[x];
          const bool holds_parent = p >= 0 && slots[j].kv.test(p);
          b.busy[j] = (slots[j].model != m ? a_.load_s[m] : 0.0) + pc_.share_time(t, static_cast<int>(s), b.speeds[j], holds_parent);
          b.epoch_model[j] = m;
          b.chosen.emplace_back(t, j);
        }
        M with_t = assigned;
        with_t.set(t);
        rec(b, i + 1, with_t);
        for (size_t x = 0; x < k; ++x) {
          b.chosen.pop_back();
          b.busy[fresh[x]] = 0.0;
          b.epoch_model[fresh[x]] = -2;
        }
      }
    }
    rec(b, i + 1, assigned);
  }

  // Heuristic rule: an idle worker holds the model of a ready task that waits.
  bool leaves_idle(const EpochBuilder<M>& b, const M& assigned) const {
    for (int t : b.ready) {
      if (assigned.test(t)) continue;
      for (size_t j = 0; j < b.state->slots.size(); ++j) {
        if (b.epoch_model[j] == -2 && b.state->slots[j].model == a_.model_of[t]) return true;
      }
    }
    return false;
  }

  void emit(EpochBuilder<M>& b) {
    const St& state = *b.state;
    M done = state.done;
    std::vector<Slot<M>> slots(state.slots);
    for (const auto& [t, j] : b.chosen) {
      done.set(t);
      slots[j].model = a_.model_of[t];
      slots[j].kv.set(t);
    }
    St next = canonical(done, state.tools | b.wave, slots, nullptr);
    const std::vector<double>& used = used_busy(b);
    const double cost = pc_.epoch_cost(used.data(), static_cast<int>(used.size()), b.wave_s);
    const double est = cost + bound(next);
    b.out.push_back({est, cost, b.chosen, std::move(next)});
  }

  const Bound& bound_of(const M& llm, const M& tools) {
    const auto key = std::make_pair(llm, tools);
    if (auto it = bound_memo_.find(key); it != bound_memo_.end()) return it->second;
    double work = 0.0;
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm.test(t)) work += a_.work_lb_s[t];
    }
    work /= pc_.max_speed();
    const double cpu = pm_.wave_s(tools);
    pm_.paths(llm, tools, down_, depth_, tdown_, tdepth_);
    pm_.heads(llm, tools, head_);
    const size_t K = a_.load_s.size();
    std::vector<double> through(K, kInf), shortest(K, kInf), loaded(K, 0.0);
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm.test(t)) {
        const int m = a_.model_of[t];
        through[m] = std::min(through[m], head_[t] + down_[t]);
        shortest[m] = std::min(shortest[m], a_.span_lb_s[t] / pc_.max_speed());
      }
    }
    // per model, were it resident nowhere: its first epoch loads it; a task of it either runs there
    // (its chain plus the load) or later (after that epoch's load and shortest task)
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm.test(t)) {
        const int m = a_.model_of[t];
        const double load = a_.load_s[m];
        const double late = std::max(head_[t], load + shortest[m]);
        loaded[m] = std::max(std::max(loaded[m], down_[t] + std::min(head_[t] + load, late)), load + through[m]);
      }
    }
    double cp = 0.0;
    int levels = 0;
    for (int t = 0; t < pc_.n(); ++t) cp = std::max(cp, down_[t]), levels = std::max(levels, depth_[t]);
    for (int x = 0; x < pc_.n_tools(); ++x) cp = std::max(cp, tdown_[x]), levels = std::max(levels, tdepth_[x]);
    const double span = std::max(std::max(cp, work / pc_.workers()), cpu);
    Bound value{a_.w_makespan * (span + levels * a_.overhead_s) + a_.w_load * work, work, span, levels,
                std::move(loaded)};
    return bound_memo_.emplace(key, std::move(value)).first->second;
  }

  // Admissible: a model resident nowhere is loaded at least once (work), in the epoch of the first
  // of its tasks to run (span: see `bound` in dp.py).
  double bound(const St& state) {
    const M llm = pm_.all_tasks() - state.done;
    const M tools = pm_.all_tools() - state.tools;
    if (!llm.any() && !tools.any()) return 0.0;
    const Bound& b = bound_of(llm, tools);
    std::vector<char> missing(a_.load_s.size(), 0);
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm.test(t)) missing[a_.model_of[t]] = 1;
    }
    for (const Slot<M>& s : state.slots) {
      if (s.model >= 0) missing[s.model] = 0;
    }
    double work = b.work, span = b.span;
    bool any = false;
    for (size_t m = 0; m < missing.size(); ++m) {
      if (!missing[m]) continue;
      any = true;
      work += a_.load_s[m];
      span = std::max(span, b.loaded[m]);
    }
    if (!any) return b.value;
    span = std::max(span, work / pc_.workers());
    return a_.w_makespan * (span + b.levels * a_.overhead_s) + a_.w_load * work;
  }

  const PlanCost& pc_;
  const PlanMasks<M>& pm_;
  const PlanCostArrays& a_;
  int64_t state_budget_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  bool restricted_;
  int64_t max_actions_;
  int width_;
  std::vector<double> priority_;
  std::unordered_map<St, double, StateHash<M>> exact_, lower_;
  std::unordered_map<St, std::pair<Action, St>, StateHash<M>> policy_;
  std::unordered_map<std::pair<M, M>, Bound, MaskPairHash<M>> bound_memo_;
  Path stack_;
  double g_ = 0.0;
  int64_t steps_ = 0;  // enumeration steps (for the time limit only)
  std::vector<double> down_, tdown_, head_;
  std::vector<int> depth_, tdepth_;
  std::vector<double> used_;
};

// Both phases over masks of type M (the module docstring of dp.py).
template <class M>
DpResult run_phases(const PlanCost& cost, double incumbent_cost, const DpOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto at = [&](double fraction) -> std::optional<Clock::time_point> {
    if (options.time_limit_s < 0) return std::nullopt;
    return start + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(options.time_limit_s * fraction));
  };
  const PlanMasks<M> masks(cost);
  DpResult result;
  auto exact = std::make_unique<Search<M>>(cost, masks, options, at(0.5), false);
  const State<M> root = exact->root();
  exact->incumbent_cost = incumbent_cost * (1 + 1e-12) + 1e-12;
  try {
    exact->solve(root, exact->incumbent_cost);
    if (exact->exhaustive) {  // a completed, uncapped search: the proof
      std::optional<typename Search<M>::Path> path;
      if (exact->has_exact(root)) {
        path = exact->policy_walk(root);
      } else {
        path = exact->incumbent_path;
      }
      if (path) result.schedule = exact->replay(*path);
      result.states = exact->states;
      result.optimal = true;
      result.cost = exact->incumbent_cost;
      return result;
    }
  } catch (const Stop&) {
  }
  // phase 2: restricted rounds, each wider than the last, until the budget or the deadline ends them
  std::unique_ptr<Search<M>> best = std::move(exact);
  int64_t states = best->states, used = 0;
  DpOptions round = options;
  while (used < options.state_budget) {
    round.state_budget = options.state_budget - used;
    auto heuristic = std::make_unique<Search<M>>(cost, masks, round, at(1.0), true);
    heuristic->incumbent_cost = best->incumbent_cost;
    bool stopped = false;
    try {
      heuristic->solve(root, heuristic->incumbent_cost);
    } catch (const Stop&) {
      stopped = true;
    }
    states += heuristic->states;
    used += heuristic->states;
    if (heuristic->incumbent_path) best = std::move(heuristic);
    if (stopped || (round.heuristic_width >= cost.n() && round.heuristic_actions >= options.max_actions)) break;
    round.heuristic_width *= 2;
    round.heuristic_actions *= 4;
  }
  if (best->incumbent_path) result.schedule = best->replay(*best->incumbent_path);
  result.states = states;
  result.optimal = false;
  result.cost = best->incumbent_cost;
  return result;
}

}  // namespace

DpResult search_epoch_dp(const PlanCost& cost, double incumbent_cost, const DpOptions& options) {
  // the smallest mask that holds every LLM task and every tool: one word for most workflows
  const int bits = std::max(cost.n(), cost.n_tools());
  if (bits <= 64) return run_phases<FixedMask<1>>(cost, incumbent_cost, options);
  if (bits <= 128) return run_phases<FixedMask<2>>(cost, incumbent_cost, options);
  if (bits <= 256) return run_phases<FixedMask<4>>(cost, incumbent_cost, options);
  return run_phases<MaskN>(cost, incumbent_cost, options);
}

}  // namespace halo
