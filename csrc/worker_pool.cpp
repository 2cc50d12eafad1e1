// WorkerPool implementation (see worker_pool.h): threads park on a condition variable between
// calls, claim task indices from a shared atomic counter, and the caller drains tasks too.
#include "worker_pool.h"

#include <stdexcept>
#include <string>

namespace halo {

WorkerPool::WorkerPool(int num_threads) {
  if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(num_threads));
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
  if (threads_.empty() || num_tasks == 1) {
    for (int64_t i = 0; i < num_tasks; ++i) task(i, 0);
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
