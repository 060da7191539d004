#pragma once
// Client-supplied text (client names, auth methods, subjects in error details) made safe to put into
// one log line: whatever a client sends, it cannot start a new line, forge a field, or drive a
// terminal.
//
// Escaped: `\n`, `\r`, `\t`, `\\`, `\"`; every other control character (00-1F, 7F) and every byte that
// is not part of valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF) as
// `\xHH` (lowercase hex). Valid UTF-8 is kept, except for characters that some terminals and log
// viewers treat as controls or line breaks, which are escaped byte by byte as `\xHH`: the C1 controls
// U+0080-U+009F, U+2028 and U+2029 (line and paragraph separators), and the bidirectional controls
// U+202A-U+202E and U+2066-U+2069. The escapes can be undone, so the original bytes can be recovered
// from the log.
//
// The result is at most `max` bytes long, the ellipsis included: when the text does not fit, it is cut
// at the last whole escape or character that leaves room for `…` (3 bytes), which is appended. (With
// `max` below 3, the cut text gets no ellipsis.)

#include <cstddef>
#include <string>
#include <string_view>

namespace busgate::gw {

std::string log_text(std::string_view s, size_t max = 256);

}  // namespace busgate::gw
