// Issue 10 part 3 prototype: per-shard compiled models vs one compiled model with one stream per
// shard, sync infer() from pinned shard threads. Prints per-infer wall and calling-thread CPU,
// process CPU per infer, RSS after compile.
#include <openvino/openvino.hpp>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <sys/resource.h>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>
static double now_us(clockid_t c) { timespec t; clock_gettime(c, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static long rss_kb() { std::ifstream f("/proc/self/status"); std::string k; long v = 0; while (f >> k) { if (k == "VmRSS:") { f >> v; break; } } return v; }
int main(int argc, char** argv) {
    std::string mode = argv[1], xml = argv[2]; int n = std::stoi(argv[3]);
    ov::Core core;
    auto model = core.read_model(xml);
    long base = rss_kb();
    ov::AnyMap cfg{ov::inference_num_threads(1), ov::hint::enable_cpu_pinning(false), ov::hint::inference_precision(ov::element::f32)};
    std::vector<ov::CompiledModel> cm;
    if (mode == "per-shard") { for (int s = 0; s < 2; s++) { auto c = cfg; c[ov::num_streams.name()] = 1; cm.push_back(core.compile_model(model, "CPU", c)); } }
    else { auto c = cfg; c[ov::num_streams.name()] = 2; auto m = core.compile_model(model, "CPU", c); cm = {m, m}; }
    model.reset();
    long compiled = rss_kb();
    std::vector<double> wall(2), tcpu(2);
    double p0 = now_us(CLOCK_PROCESS_CPUTIME_ID);
    auto shard = [&](int s) {
        cpu_set_t set; CPU_ZERO(&set); CPU_SET(s, &set); pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        std::vector<ov::InferRequest> reqs; for (int i = 0; i < 4; i++) { reqs.push_back(cm[s].create_infer_request()); reqs.back().infer(); }
        std::vector<double> w;
        double c0 = now_us(CLOCK_THREAD_CPUTIME_ID);
        for (int k = 0; k < n; k++) { double t0 = now_us(CLOCK_MONOTONIC); reqs[k % 4].infer(); w.push_back(now_us(CLOCK_MONOTONIC) - t0); }
        tcpu[s] = (now_us(CLOCK_THREAD_CPUTIME_ID) - c0) / n;
        std::sort(w.begin(), w.end()); wall[s] = w[w.size() / 2];
    };
    std::thread a(shard, 0), b(shard, 1); a.join(); b.join();
    double pcpu = (now_us(CLOCK_PROCESS_CPUTIME_ID) - p0) / (2.0 * n);
    printf("%s %s: RSS +%.0f MB after compile (%.0f MB total); shard 0 p50 %.0f us, thread CPU %.0f us; shard 1 p50 %.0f us, thread CPU %.0f us; process CPU per infer %.0f us\n",
           mode.c_str(), xml.substr(xml.rfind('/') + 1).c_str(), (compiled - base) / 1024.0, rss_kb() / 1024.0, wall[0], tcpu[0], wall[1], tcpu[1], pcpu);
}
