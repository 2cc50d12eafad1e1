// SchedulerCore: readiness tracking for every physical node of a consolidated batch. It promotes a
// node to READY when all its inputs are DONE, hands each ready queue (a worker, or the tool pool)
// its nodes in (priority, id) order, and cancels everything downstream of a failure. The caller
// only executes what pop() hands it and reports back with complete() or fail().
//
// Not thread-safe by design: one thread drives it. Calls that overlap (possible only while a long
// call runs with the GIL released) throw std::runtime_error instead of corrupting the state.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace halo {

// An illegal transition (completing a DONE node, requeueing a RUNNING one, ...): a caller bug in
// the driving loop, distinct from malformed input (std::invalid_argument).
class SchedulerStateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class SchedulerCore {
 public:
  using NodeId = int32_t;
  enum State : int8_t { kPending = 0, kReady = 1, kRunning = 2, kDone = 3, kFailed = 4, kCancelled = 5 };
  static const char* state_name(int8_t state);

  // Node i waits for upstream_indices[upstream_offsets[i]:upstream_offsets[i+1]] (repeats allowed:
  // an entry listed twice is waited for once per listing, which ends the same way). queue[i] is the
  // ready queue node i is handed out from; num_queues < 0 means max(queue) + 1. Smaller priority
  // is handed out first, ties by id. std::invalid_argument on malformed input, naming the entry.
  SchedulerCore(const int64_t* upstream_offsets, size_t num_offsets, const int32_t* upstream_indices,
                size_t num_indices, const int32_t* queue, size_t queue_len, const int64_t* priority,
                size_t priority_len, int64_t num_queues = -1);
  SchedulerCore(const SchedulerCore&) = delete;
  SchedulerCore& operator=(const SchedulerCore&) = delete;

  int64_t num_nodes() const { return static_cast<int64_t>(state_.size()); }
  int64_t num_queues() const { return static_cast<int64_t>(heaps_.size()); }
  int64_t num_edges() const { return static_cast<int64_t>(successors_.size()); }
  int64_t remaining() const { return remaining_; }  // nodes not DONE, FAILED or CANCELLED
  int64_t running() const { return running_; }
  bool finished() const { return remaining_ == 0; }
  int64_t ready_count(int64_t queue) const;
  int8_t state(int64_t node) const;
  void copy_states(int8_t* out) const;  // num_nodes() entries

  // Up to max_items (< 0: all) READY nodes of queue in (priority, id) order; they become RUNNING.
  std::vector<NodeId> pop(int64_t queue, int64_t max_items);
  // The nodes become DONE (from PENDING, READY or RUNNING). Returns the nodes that became READY
  // and still are, ascending. All-or-nothing: every id is checked before anything changes. A
  // node cancelled while RUNNING absorbs its one late report silently.
  std::vector<NodeId> complete(const int32_t* ids, size_t n);
  std::vector<NodeId> complete(const int64_t* ids, size_t n);
  // The node becomes FAILED and every transitive descendant not yet terminal CANCELLED (a RUNNING
  // one too: its late complete()/fail() is then ignored). Returns the cancelled ids, ascending.
  std::vector<NodeId> fail(int64_t node);
  void requeue(int64_t node, int64_t queue);  // READY or PENDING only
  void set_priority(int64_t node, int64_t priority);  // READY or PENDING only

 private:
  struct Entry {  // a heap slot; stale once the node's stamp moved on (lazy deletion)
    int64_t priority;
    NodeId node;
    uint32_t stamp;
  };
  class CallGuard;

  template <typename T>
  std::vector<NodeId> complete_ids(const T* ids, size_t n);
  void check_node(int64_t node) const;
  void check_queue(int64_t queue) const;
  void push_ready(NodeId node);  // a fresh heap entry in its queue; older entries go stale
  void set_terminal(NodeId node, State state);  // from PENDING, READY or RUNNING
  uint32_t next_mark();
  bool stale(const Entry& e) const { return state_[e.node] != kReady || stamp_[e.node] != e.stamp; }
  void maybe_compact(int32_t queue);
  [[noreturn]] void throw_state(NodeId node, const char* action) const;  // SchedulerStateError

  std::vector<int64_t> successor_offsets_;  // CSR: successors of u are successors_[off[u]:off[u+1]]
  std::vector<NodeId> successors_;
  std::vector<int32_t> waiting_;  // upstream entries of a PENDING node not yet DONE
  std::vector<int8_t> state_;
  std::vector<int32_t> queue_;
  std::vector<int64_t> priority_;
  std::vector<uint32_t> stamp_;  // bumped on every heap push; only the latest entry is live
  std::vector<uint8_t> absorb_;  // cancelled while RUNNING: its one late report is ignored
  std::vector<std::vector<Entry>> heaps_;  // per queue, min-heap on (priority, node), one live entry per READY node
  std::vector<int64_t> ready_count_;
  std::vector<uint32_t> mark_;  // scratch visit marks for complete()/fail(), compared to epoch_
  uint32_t epoch_ = 0;
  int64_t remaining_ = 0;
  int64_t running_ = 0;
  mutable std::atomic<bool> busy_{false};
};

}  // namespace halo
