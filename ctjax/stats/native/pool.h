// Helper threads shared by ctjax's native kernels (nearest.cc, scatter.cc).
//
// A call splits its work into items and runs them on the calling thread and
// on helper threads that this library owns (one per CPU the process may run
// on, less one; created on first use, never joined, asleep between calls).
// Items are claimed through an atomic counter. The caller works too and then
// waits only for the items a helper has claimed, never for a helper that has
// not started, so busy or missing helpers (e.g. after a fork) cannot stall a
// call: it then runs on the caller alone.

#ifndef CTJAX_NATIVE_POOL_H_
#define CTJAX_NATIVE_POOL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#if defined(__linux__)
#include <sched.h>
#endif

namespace ctjax_native {

// Items 0..total-1 of one call. Late helpers (after the caller returned)
// find no item left and never call ``run``, whose captures may be gone; the
// job itself is kept alive by their shared_ptr.
struct Job {
  Job(int64_t total, std::function<void(int64_t)> run)
      : total(total), run(std::move(run)) {}
  const int64_t total;
  const std::function<void(int64_t)> run;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Work() {
    for (int64_t i = next.fetch_add(1); i < total; i = next.fetch_add(1)) {
      run(i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

class Helpers {
 public:
  static Helpers& Get() {
    static Helpers* helpers = new Helpers();
    return *helpers;
  }
  int64_t size() const { return size_; }
  void Offer(const std::shared_ptr<Job>& job, int64_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int64_t i = 0; i < n; ++i) tasks_.push_back(job);
    }
    if (n == 1) {
      cv_.notify_one();
    } else {
      cv_.notify_all();
    }
  }

 private:
  Helpers() {
    int64_t cpus = std::thread::hardware_concurrency();
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
#endif
    size_ = std::max<int64_t>(cpus, 1) - 1;
    for (int64_t i = 0; i < size_; ++i) std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !tasks_.empty(); });
        job = std::move(tasks_.front());
        tasks_.pop_front();
      }
      job->Work();
    }
  }
  int64_t size_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> tasks_;
};

// Runs ``run(i)`` for i in [0, total) on the caller and free helpers and
// returns when every item is done. Calls running at once (e.g. ctjax's layer
// groups, one program per host thread) share the CPUs: each asks for helpers
// only for the CPUs the others do not occupy.
inline void RunItems(int64_t total, std::function<void(int64_t)> run) {
  if (total <= 0) return;
  auto job = std::make_shared<Job>(total, std::move(run));
  Helpers& helpers = Helpers::Get();
  static std::atomic<int64_t> active{0};
  const int64_t others = active.fetch_add(1);
  const int64_t n_help = std::min<int64_t>(
      std::max<int64_t>(helpers.size() - others, 0), total - 1);
  if (n_help > 0) helpers.Offer(job, n_help);
  job->Work();
  active.fetch_sub(1);
  while (job->done.load(std::memory_order_acquire) < total) {
    std::this_thread::yield();
  }
}

}  // namespace ctjax_native

#endif  // CTJAX_NATIVE_POOL_H_
