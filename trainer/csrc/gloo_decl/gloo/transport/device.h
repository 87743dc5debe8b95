// See ../README.md: declarations for ProcessGroupGloo.hpp only.
#pragma once
namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
