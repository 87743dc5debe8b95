// See README.md: declarations for ProcessGroupGloo.hpp only (its inline setTimeout names
// Context::setTimeout; mdm never calls it).
#pragma once
#include <chrono>
namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
