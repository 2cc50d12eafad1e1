// WorkerPool: a small persistent pool of threads that runs the tasks of one call at a time, so a
// native kernel called once per layer (CpuAttention) never spawns threads. Plain C++, no pybind11.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace halo {

// A fixed set of threads that run the tasks of one call at a time; the calling thread works too,
// so WorkerPool(n) owns n - 1 threads. Threads sleep on a condition variable between calls rather
// than spin: between two attention calls torch's own threads need the cores for the matmuls.
class WorkerPool {
 public:
  using Task = std::function<void(int64_t task, int worker)>;

  explicit WorkerPool(int num_threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int num_threads() const { return static_cast<int>(threads_.size()) + 1; }
  // Runs task(i, worker) for every i in [0, num_tasks), each exactly once, worker in
  // [0, num_threads()); returns when all have finished. Calls from several threads serialize.
  // Tasks must not throw.
  void run(int64_t num_tasks, const Task& task);

 private:
  void work(int worker);
  void drain(int worker);

  std::mutex call_mutex_;  // one run() at a time
  std::mutex mutex_;       // guards the fields below up to next_
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;  // bumped once per run(); a worker looks at each generation once
  int active_ = 0;           // pool threads working on the current run()
  bool stop_ = false;
  const Task* task_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_{0};  // the next unclaimed task index
  std::vector<std::thread> threads_;
};

}  // namespace halo
