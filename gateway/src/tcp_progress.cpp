#include "tcp_progress.hpp"

// linux/tcp.h, not netinet/tcp.h: only the kernel's struct has tcpi_bytes_acked. Kept out of the
// files that include Asio, whose netinet/tcp.h would clash with it.
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>

namespace busgate::gw {

uint64_t tcp_bytes_acked(int fd) {
  if (fd < 0) return 0;
  tcp_info info{};
  socklen_t len = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return 0;
  if (len < offsetof(tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked) return 0;
  return info.tcpi_bytes_acked;
}

}  // namespace busgate::gw
