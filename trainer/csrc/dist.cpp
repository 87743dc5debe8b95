// mdm's bridge to libtorch's c10d: a TCPStore rendezvous and a Gloo process group, the engine
// under PyTorch DDP. Plain C functions for Rust (trainer/src/dist/ffi.rs); every C++ exception
// becomes a return code and a message, never an abort.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

struct mdm_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
  int rank;
  int world;
};

static void put_err(char* err, size_t n, const char* msg) {
  if (err != nullptr && n > 0) {
    std::snprintf(err, n, "%s", msg);
  }
}

#define MDM_TRY(err, n, ...)                             \
  try {                                                  \
    __VA_ARGS__                                          \
  } catch (const c10::Error& e) {                        \
    put_err(err, n, e.what_without_backtrace());         \
    return -1;                                           \
  } catch (const std::exception& e) {                    \
    put_err(err, n, e.what());                           \
    return -1;                                           \
  } catch (...) {                                        \
    put_err(err, n, "unknown C++ exception");           \
    return -1;                                           \
  }

static bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

extern "C" {

// Connects rank `rank` of `world` through a TCPStore at host:port (rank 0 serves it) and builds
// a Gloo group with `timeout_ms` for the rendezvous and every collective. The Gloo device binds
// GLOO_SOCKET_IFNAME when set, the loopback address when the master is local, else the host's
// name. Returns 0 and sets *out, or -1 with a message.
int mdm_pg_new(const char* host, int port, int rank, int world, long long timeout_ms,
               mdm_pg** out, char* err, size_t n) {
  MDM_TRY(err, n, {
    std::string h(host);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(h, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && *ifname != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (is_loopback(h)) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    *out = new mdm_pg{store, gloo, rank, world};
    return 0;
  })
}

void mdm_pg_free(mdm_pg* pg) { delete pg; }

// In-place all-reduce of one dense tensor: op 0 = sum, 1 = max.
int mdm_pg_allreduce(mdm_pg* pg, at::Tensor* t, int op, char* err, size_t n) {
  MDM_TRY(err, n, {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp(c10d::ReduceOp::MAX) : c10d::ReduceOp(c10d::ReduceOp::SUM);
    pg->gloo->allreduce(ts, o)->wait();
    return 0;
  })
}

// In-place broadcast from `root`.
int mdm_pg_broadcast(mdm_pg* pg, at::Tensor* t, int root, char* err, size_t n) {
  MDM_TRY(err, n, {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    pg->gloo->broadcast(ts, o)->wait();
    return 0;
  })
}

int mdm_pg_barrier(mdm_pg* pg, char* err, size_t n) {
  MDM_TRY(err, n, {
    pg->gloo->barrier()->wait();
    return 0;
  })
}

// Store key/value (small values: rank heartbeats).
int mdm_store_set(mdm_pg* pg, const char* key, const char* value, char* err, size_t n) {
  MDM_TRY(err, n, {
    std::string v(value);
    pg->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    return 0;
  })
}

// Reads a key without waiting: 1 and the value (NUL-terminated, truncated to `cap`) when it is
// set, 0 when it is not, -1 on error (the store is unreachable).
int mdm_store_try_get(mdm_pg* pg, const char* key, char* buf, size_t cap, char* err, size_t n) {
  MDM_TRY(err, n, {
    if (!pg->store->check({std::string(key)})) {
      return 0;
    }
    auto v = pg->store->get(key);
    std::string s(v.begin(), v.end());
    std::snprintf(buf, cap, "%s", s.c_str());
    return 1;
  })
}

// var.grad = grad (a view into a flat buffer): autograd then accumulates into it in place.
int mdm_set_grad(at::Tensor* var, at::Tensor* grad, char* err, size_t n) {
  MDM_TRY(err, n, {
    var->mutable_grad() = *grad;
    return 0;
  })
}

}  // extern "C"
