// Native epoch DP (see epoch_dp.h): depth-first branch-and-bound over canonical plan states with
// memoisation, mirroring python/halo/plan/search/dp.py so both find the same optimum.
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

struct Slot {
  int kind;
  int model;  // -1: nothing loaded
  Mask kv;
  bool operator<(const Slot& o) const {
    if (kind != o.kind) return kind < o.kind;
    if (model != o.model) return model < o.model;
    return kv < o.kv;
  }
  bool operator==(const Slot& o) const { return kind == o.kind && model == o.model && kv == o.kv; }
};

struct State {
  Mask done = 0;
  Mask tools = 0;
  std::vector<Slot> slots;  // canonical: sorted
  bool operator==(const State& o) const { return done == o.done && tools == o.tools && slots == o.slots; }
};

struct StateHash {
  size_t operator()(const State& s) const {
    uint64_t h = s.done * 0x9E3779B97F4A7C15ULL ^ (s.tools + 0x7F4A7C159E3779B9ULL);
    for (const Slot& slot : s.slots) {
      h ^= (slot.kv + (static_cast<uint64_t>(slot.kind) << 40) + static_cast<uint64_t>(slot.model + 1)) +
           0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h ^ (h >> 29));
  }
};

struct MaskPairHash {
  size_t operator()(const std::pair<Mask, Mask>& k) const {
    return static_cast<size_t>(k.first * 0x9E3779B97F4A7C15ULL ^ (k.second + 0xC2B2AE3D27D4EB4FULL));
  }
};

using Action = std::vector<std::pair<int, int>>;  // (task, canonical slot); empty: tool-only epoch

struct Move {
  double est;
  double cost;
  Action action;
  State next;
};

struct Bound {
  double value, work, span;
  int levels;
  std::vector<double> loaded;  // per model: the span it forces were it resident nowhere (dp.py's bound)
};

struct Stop {};

// The per-epoch enumeration context of `Search::actions` (one object, not a long signature).
struct EpochBuilder {
  const State* state = nullptr;
  std::vector<int> ready;
  std::vector<Mask> rest_after;
  std::vector<double> speeds, busy;
  std::vector<int> epoch_model;
  Action chosen;
  std::vector<Move> out;
  Mask wave = 0, future_tools = 0, notdone = 0;
  double wave_s = 0.0, limit = 0.0;
};

class Search {
 public:
  Search(const PlanCost& pc, const DpOptions& options, std::optional<std::chrono::steady_clock::time_point> deadline,
         bool restricted)
      : pc_(pc),
        a_(pc.arrays()),
        state_budget_(options.state_budget),
        deadline_(deadline),
        restricted_(restricted),
        max_actions_(restricted ? options.heuristic_actions : options.max_actions),
        width_(options.heuristic_width),
        priority_(pc.bottom_levels()) {}

  double incumbent_cost = kInf;
  std::optional<std::vector<std::pair<State, Action>>> incumbent_path;
  int64_t states = 0;
  bool exhaustive = true;

  State root() const {
    std::vector<Slot> slots;
    for (int w = 0; w < pc_.workers(); ++w) slots.push_back({a_.kind_of[w], a_.initial_model[w], 0});
    return canonical(0, 0, slots, nullptr);
  }

  bool has_exact(const State& s) const { return exact_.count(s) > 0; }

  State canonical(Mask done, Mask tools, const std::vector<Slot>& slots, std::vector<int>* perm_out) const {
    const Mask keep = pc_.kv_parents_pending(done);
    std::vector<Slot> trimmed(slots);
    for (Slot& s : trimmed) s.kv &= keep;
    std::vector<int> perm(trimmed.size());
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int>(i);
    std::stable_sort(perm.begin(), perm.end(), [&](int x, int y) { return trimmed[x] < trimmed[y]; });
    State s{done, tools, {}};
    for (int i : perm) s.slots.push_back(trimmed[i]);
    if (perm_out) *perm_out = std::move(perm);
    return s;
  }

  // Invariant: returns the exact least cost-to-go of `state` if below `limit`, else a lower bound >= limit.
  double solve(const State& state, double limit) {
    if (state.done == pc_.all_mask() && state.tools == pc_.all_tools()) {
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
    const Move* best_move = nullptr;
    std::vector<Move> moves = actions(state, limit);
    for (const Move& mv : moves) {
      const double cap = std::min(limit, best);
      if (mv.est >= cap) break;
      stack_.emplace_back(state, mv.action);
      g_ += mv.cost;
      const double sub = solve(mv.next, cap - mv.cost);
      g_ -= mv.cost;
      stack_.pop_back();
      const bool finished = mv.next.done == pc_.all_mask() && mv.next.tools == pc_.all_tools();
      if ((finished || has_exact(mv.next)) && mv.cost + sub < best) {
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

  std::vector<std::pair<State, Action>> policy_walk(State state) const {
    std::vector<std::pair<State, Action>> path;
    while (state.done != pc_.all_mask() || state.tools != pc_.all_tools()) {
      const auto& [action, next] = policy_.at(state);
      path.emplace_back(state, action);
      state = next;
    }
    return path;
  }

  Schedule replay(const std::vector<std::pair<State, Action>>& path) const {
    Mask done = 0, tools = 0;
    std::vector<Slot> actual;
    for (int w = 0; w < pc_.workers(); ++w) actual.push_back({a_.kind_of[w], a_.initial_model[w], 0});
    Schedule epochs;
    std::vector<int> perm;
    for (const auto& [expected, action] : path) {
      const State state = canonical(done, tools, actual, &perm);
      if (!(state == expected)) throw std::logic_error("epoch DP: replay diverged from the search");
      tools = pc_.available_tools(done);
      std::vector<std::pair<int, int>> epoch;
      for (const auto& [t, j] : action) {
        const int w = perm[j];
        actual[w].model = a_.model_of[t];
        actual[w].kv |= Mask{1} << t;
        done |= Mask{1} << t;
        epoch.emplace_back(t, w);
      }
      epochs.push_back(std::move(epoch));
    }
    return epochs;
  }

 private:
  void offer(const std::vector<std::pair<State, Action>>* tail) {
    const double total = g_ + (tail && !tail->empty() ? exact_.at(tail->front().first) : 0.0);
    if (total < incumbent_cost) {
      incumbent_cost = total;
      std::vector<std::pair<State, Action>> path(stack_);
      if (tail) path.insert(path.end(), tail->begin(), tail->end());
      incumbent_path = std::move(path);
    }
  }

  std::vector<Move> actions(const State& state, double limit) {
    EpochBuilder b;
    b.state = &state;
    b.limit = limit;
    const Mask ready = pc_.ready(state.done, state.tools);
    for (int t = 0; t < pc_.n(); ++t) {
      if (ready >> t & 1) b.ready.push_back(t);
    }
    std::stable_sort(b.ready.begin(), b.ready.end(), [&](int x, int y) { return priority_[x] > priority_[y]; });
    if (restricted_ && static_cast<int>(b.ready.size()) > width_) b.ready.resize(width_);
    b.wave = pc_.available_tools(state.done) & ~state.tools;
    b.wave_s = pc_.wave_s(b.wave);
    b.future_tools = pc_.all_tools() & ~state.tools & ~b.wave;
    b.notdone = pc_.all_mask() & ~state.done;
    const size_t W = state.slots.size();
    for (const Slot& s : state.slots) b.speeds.push_back(a_.kind_speed[s.kind]);
    b.busy.assign(W, 0.0);
    b.epoch_model.assign(W, -2);
    if (b.wave) emit(b);
    b.rest_after.assign(b.ready.size() + 1, 0);
    for (int i = static_cast<int>(b.ready.size()) - 1; i >= 0; --i) {
      b.rest_after[i] = b.rest_after[i + 1] | Mask{1} << b.ready[i];
    }
    rec(b, 0, 0);
    std::stable_sort(b.out.begin(), b.out.end(), [](const Move& x, const Move& y) { return x.est < y.est; });
    return std::move(b.out);
  }

  void rec(EpochBuilder& b, size_t i, Mask assigned) {
    if (static_cast<int64_t>(b.out.size()) >= max_actions_) {
      exhaustive = false;
      return;
    }
    // one state's epochs can be many: the time limit is checked here too
    if (deadline_ && ++steps_ % 4096 == 0 && std::chrono::steady_clock::now() > *deadline_) throw Stop{};
    const std::vector<Slot>& slots = b.state->slots;
    const size_t W = slots.size();
    if (!b.chosen.empty()) {
      double used[64];
      int count = 0;
      for (size_t j = 0; j < W; ++j) {
        if (b.epoch_model[j] != -2) used[count++] = b.busy[j];
      }
      const Mask remaining = b.notdone & ~assigned & ~b.rest_after[i];
      const double partial = pc_.epoch_cost(used, count, b.wave_s) + bound_of(remaining, b.future_tools).value;
      if (partial >= b.limit) return;
    }
    if (i == b.ready.size()) {
      if (!b.chosen.empty() && !(restricted_ && leaves_idle(b, assigned))) emit(b);
      return;
    }
    const int t = b.ready[i];
    const int m = a_.model_of[t];
    const int p = a_.parent[t];
    std::vector<Slot> seen;
    bool loading_tried = false;
    for (size_t j = 0; j < W; ++j) {
      if (b.epoch_model[j] != -2 && b.epoch_model[j] != m) continue;
      const bool fresh = b.epoch_model[j] == -2;
      const bool holds_parent = p >= 0 && (slots[j].kv >> p & 1);
      if (fresh) {
        if (std::find(seen.begin(), seen.end(), slots[j]) != seen.end()) continue;
        seen.push_back(slots[j]);
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
      rec(b, i + 1, assigned | Mask{1} << t);
      b.chosen.pop_back();
      b.busy[j] = old_busy;
      b.epoch_model[j] = old_model;
    }
    rec(b, i + 1, assigned);
  }

  // Heuristic rule: an idle worker holds the model of a ready task that waits.
  bool leaves_idle(const EpochBuilder& b, Mask assigned) const {
    for (int t : b.ready) {
      if (assigned >> t & 1) continue;
      for (size_t j = 0; j < b.state->slots.size(); ++j) {
        if (b.epoch_model[j] == -2 && b.state->slots[j].model == a_.model_of[t]) return true;
      }
    }
    return false;
  }

  void emit(EpochBuilder& b) {
    const State& state = *b.state;
    Mask done = state.done;
    std::vector<Slot> slots(state.slots);
    for (const auto& [t, j] : b.chosen) {
      done |= Mask{1} << t;
      slots[j].model = a_.model_of[t];
      slots[j].kv |= Mask{1} << t;
    }
    State next = canonical(done, state.tools | b.wave, slots, nullptr);
    double used[64];
    int count = 0;
    for (size_t j = 0; j < slots.size(); ++j) {
      if (b.epoch_model[j] != -2) used[count++] = b.busy[j];
    }
    const double cost = pc_.epoch_cost(used, count, b.wave_s);
    const double est = cost + bound(next);
    b.out.push_back({est, cost, b.chosen, std::move(next)});
  }

  const Bound& bound_of(Mask llm, Mask tools) {
    const auto key = std::make_pair(llm, tools);
    if (auto it = bound_memo_.find(key); it != bound_memo_.end()) return it->second;
    double work = 0.0;
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm >> t & 1) work += a_.base_s[t];
    }
    work /= pc_.max_speed();
    const double cpu = pc_.wave_s(tools);
    pc_.paths(llm, tools, down_, depth_, tdown_, tdepth_);
    pc_.heads(llm, tools, head_);
    const size_t K = a_.load_s.size();
    std::vector<double> through(K, kInf), shortest(K, kInf), loaded(K, 0.0);
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm >> t & 1) {
        const int m = a_.model_of[t];
        through[m] = std::min(through[m], head_[t] + down_[t]);
        shortest[m] = std::min(shortest[m], a_.base_s[t] / pc_.max_speed());
      }
    }
    // per model, were it resident nowhere: its first epoch loads it; a task of it either runs there
    // (its chain plus the load) or later (after that epoch's load and shortest task)
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm >> t & 1) {
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
  double bound(const State& state) {
    const Mask llm = pc_.all_mask() & ~state.done;
    const Mask tools = pc_.all_tools() & ~state.tools;
    if (!llm && !tools) return 0.0;
    const Bound& b = bound_of(llm, tools);
    std::vector<char> missing(a_.load_s.size(), 0);
    for (int t = 0; t < pc_.n(); ++t) {
      if (llm >> t & 1) missing[a_.model_of[t]] = 1;
    }
    for (const Slot& s : state.slots) {
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
  const PlanCostArrays& a_;
  int64_t state_budget_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  bool restricted_;
  int64_t max_actions_;
  int width_;
  std::vector<double> priority_;
  std::unordered_map<State, double, StateHash> exact_, lower_;
  std::unordered_map<State, std::pair<Action, State>, StateHash> policy_;
  std::unordered_map<std::pair<Mask, Mask>, Bound, MaskPairHash> bound_memo_;
  std::vector<std::pair<State, Action>> stack_;
  double g_ = 0.0;
  int64_t steps_ = 0;  // enumeration steps (for the time limit only)
  std::vector<double> down_, tdown_, head_;
  std::vector<int> depth_, tdepth_;
};

}  // namespace

DpResult search_epoch_dp(const PlanCost& cost, double incumbent_cost, const DpOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto at = [&](double fraction) -> std::optional<Clock::time_point> {
    if (options.time_limit_s < 0) return std::nullopt;
    return start + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(options.time_limit_s * fraction));
  };
  DpResult result;
  auto exact = std::make_unique<Search>(cost, options, at(0.5), false);
  const State root = exact->root();
  exact->incumbent_cost = incumbent_cost * (1 + 1e-12) + 1e-12;
  try {
    exact->solve(root, exact->incumbent_cost);
    if (exact->exhaustive) {  // a completed, uncapped search: the proof
      std::optional<std::vector<std::pair<State, Action>>> path;
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
  std::unique_ptr<Search> best = std::move(exact);
  int64_t states = best->states, used = 0;
  DpOptions round = options;
  while (used < options.state_budget) {
    round.state_budget = options.state_budget - used;
    auto heuristic = std::make_unique<Search>(cost, round, at(1.0), true);
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

}  // namespace halo
