// WorkerPool implementation (see worker_pool.h): an OpenMP team per call where the build has it;
// else threads that park on a condition variable between calls. Either way the threads claim task
// indices from a shared atomic counter, and the caller drains tasks too.
#include "worker_pool.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#if defined(HALO_OPENMP)
#include <omp.h>
#endif

namespace halo {

bool openmp_available() {
#if defined(HALO_OPENMP)
  return true;
#else
  return false;
#endif
}

Threads default_threads() { return openmp_available() ? Threads::kOpenMp : Threads::kOwn; }

Threads parse_threads(const std::string& name) {
  if (name == "auto") return default_threads();
  if (name == "openmp") return Threads::kOpenMp;
  if (name == "own") return Threads::kOwn;
  throw std::invalid_argument("threads must be 'auto', 'openmp' or 'own', got '" + name + "'");
}

std::string threads_name(Threads threads) { return threads == Threads::kOpenMp ? "openmp" : "own"; }

WorkerPool::WorkerPool(int num_threads, Threads threads) : num_threads_(num_threads), threads_kind_(threads) {
  if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (threads == Threads::kOpenMp) {
    if (!openmp_available()) throw std::invalid_argument("this build of the core has no OpenMP (threads='own')");
    return;  // each run() is an OpenMP team: no thread of our own
  }
  threads_.reserve(static_cast<size_t>(num_threads - 1));
  for (int w = 1; w < num_threads; ++w) threads_.emplace_back([this, w] { work(w); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void WorkerPool::run(int64_t num_tasks, const Task& task) {
  if (num_tasks <= 0) return;
  std::lock_guard<std::mutex> call(call_mutex_);
  if (num_threads_ == 1 || num_tasks == 1) {
    for (int64_t i = 0; i < num_tasks; ++i) task(i, 0);
    return;
  }
  if (threads_kind_ == Threads::kOpenMp) {
    run_openmp(num_tasks, task);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    num_tasks_ = num_tasks;
    next_.store(0, std::memory_order_relaxed);
    ++generation_;
  }
  wake_.notify_all();
  drain(0);
  // Every task is claimed now; wait only for the workers still running one. A worker that has not
  // woken yet is not waited for: on a busy machine it may not get a core for a long while, and
  // the caller would rather do the work itself. It finds the job gone when it wakes (see work()).
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return active_ == 0; });
  task_ = nullptr;
}

void WorkerPool::run_openmp(int64_t num_tasks, const Task& task) {
#if defined(HALO_OPENMP)
  // Dynamic claiming, as below: a thread the OS has not scheduled yet leaves its share to the others.
  std::atomic<int64_t> next{0};
  const int team = static_cast<int>(std::min<int64_t>(num_threads_, num_tasks));
#pragma omp parallel num_threads(team)
  {
    const int worker = omp_get_thread_num();  // < team <= num_threads_: the worker's scratch index
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < num_tasks;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      task(i, worker);
    }
  }
#else
  (void)num_tasks;  // unreachable: the constructor refuses kOpenMp without OpenMP
  (void)task;
#endif
}

void WorkerPool::drain(int worker) {
  for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < num_tasks_;
       i = next_.fetch_add(1, std::memory_order_relaxed)) {
    (*task_)(i, worker);
  }
}

void WorkerPool::work(int worker) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      // Joining is decided under the lock that run() holds to finish: either this worker counts
      // in active_ before run() looks, or it sees the job already finished and leaves it alone.
      if (!task_ || next_.load(std::memory_order_relaxed) >= num_tasks_) continue;
      ++active_;
    }
    drain(worker);
    std::lock_guard<std::mutex> lock(mutex_);
    if (--active_ == 0) done_.notify_one();
  }
}

}  // namespace halo
