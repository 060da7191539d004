#pragma once
// How much a TCP peer has acknowledged on a socket: what flow control takes as a consumer's progress
// (write completions are too coarse: the kernel wakes a writer only when a third of a large send
// buffer is free).

#include <cstdint>

namespace busgate::gw {

// Bytes the peer has acknowledged on TCP socket `fd` (TCP_INFO tcpi_bytes_acked); 0 when unknown.
uint64_t tcp_bytes_acked(int fd);

}  // namespace busgate::gw
