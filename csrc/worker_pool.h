// WorkerPool: runs the tasks of one call at a time on a fixed number of threads, so a native kernel
// called once per layer (CpuAttention) never spawns threads. Where the build has OpenMP (HALO_OPENMP)
// those are the process's OpenMP threads, which are torch's: torch's libgomp is loaded under the same
// soname, so the dynamic linker hands this module the same runtime and the same thread team. Parked
// threads of our own would contend with torch's, which spin for a while after every matmul: on a
// 2-core machine the attention call after a layer's projections waited for a core (measured in the
// engine: 1.22 ms per call at batch 64 against 0.77 ms alone, 82 us against 14 us at batch 1).
// Without OpenMP it keeps threads of its own. Plain C++, no pybind11.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace halo {

// How a WorkerPool gets its threads: the process's OpenMP team, or threads of its own.
enum class Threads { kOpenMp, kOwn };

bool openmp_available();  // built with OpenMP (HALO_OPENMP)
Threads default_threads();  // kOpenMp where available
Threads parse_threads(const std::string& name);  // "auto", "openmp" or "own"; std::invalid_argument else
std::string threads_name(Threads threads);

// A fixed set of threads that run the tasks of one call at a time; the calling thread works too.
// kOpenMp owns no thread (an OpenMP team of n runs each call); kOwn owns n - 1 threads that sleep
// on a condition variable between calls rather than spin: between two attention calls torch's own
// threads need the cores for the matmuls. kOwn is what a build without OpenMP runs, and what tests
// and benchmarks name to check or time it.
class WorkerPool {
 public:
  using Task = std::function<void(int64_t task, int worker)>;

  // std::invalid_argument if num_threads < 1, or kOpenMp in a build without OpenMP.
  explicit WorkerPool(int num_threads, Threads threads = default_threads());
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int num_threads() const { return num_threads_; }
  Threads threads() const { return threads_kind_; }
  // Runs task(i, worker) for every i in [0, num_tasks), each exactly once, worker in
  // [0, num_threads()); returns when all have finished. Calls from several threads serialize.
  // Tasks must not throw.
  void run(int64_t num_tasks, const Task& task);

 private:
  void run_openmp(int64_t num_tasks, const Task& task);
  void work(int worker);
  void drain(int worker);

  int num_threads_;
  Threads threads_kind_;
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
