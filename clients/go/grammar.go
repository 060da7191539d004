package busgate

// Grammar of subjects, queue groups and headers (docs/protocol.md sections 8, 10 and 11). The codec
// applies it to client frames; the client applies it before sending, so that mistakes are reported
// by the call that made them.

const (
	maxSubjectLen  = 256
	maxQueueLen    = 64
	maxHeaderKey   = 64
	maxHeaderValue = 4096
	maxHeaders     = 64
)

// checkSubject validates a subject. wildcards allows `*` and `>` tokens (SUB subjects only).
// It returns 0 when the subject is valid.
func checkSubject(s string, wildcards bool) Code {
	n := len(s)
	if n == 0 || n > maxSubjectLen {
		return CodeInvalidSubject
	}
	hasWildcard := false
	start := 0
	for i := 0; i <= n; i++ {
		if i < n {
			c := s[i]
			if c != '.' {
				if c <= 0x20 || c == 0x7f {
					return CodeInvalidSubject
				}
				continue
			}
		}
		tok := s[start:i]
		if len(tok) == 0 {
			return CodeInvalidSubject
		}
		if len(tok) == 1 && (tok[0] == '*' || tok[0] == '>') {
			if tok[0] == '>' && i != n {
				return CodeInvalidSubject
			}
			hasWildcard = true
		} else {
			for j := 0; j < len(tok); j++ {
				if tok[j] == '*' || tok[j] == '>' {
					return CodeInvalidSubject
				}
			}
		}
		start = i + 1
	}
	if s[0] == '$' {
		return CodeReservedSubject
	}
	if hasWildcard && !wildcards {
		return CodeWildcardNotAllowed
	}
	return 0
}

// checkQueue validates a queue group name.
func checkQueue(q string) Code {
	if len(q) == 0 || len(q) > maxQueueLen {
		return CodeInvalidQueue
	}
	for i := 0; i < len(q); i++ {
		switch c := q[i]; {
		case c <= 0x20, c == 0x7f, c == '.', c == '*', c == '>':
			return CodeInvalidQueue
		}
	}
	return 0
}

func checkHeaderKey(k string) Code {
	if len(k) == 0 || len(k) > maxHeaderKey {
		return CodeInvalidHeader
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return CodeInvalidHeader
		}
	}
	if len(k) >= 8 && asciiLowerEq(k[:8], "busgate-") {
		return CodeReservedHeader
	}
	return 0
}

func checkHeaderValue(v string) Code {
	if len(v) > maxHeaderValue {
		return CodeInvalidHeader
	}
	for i := 0; i < len(v); i++ {
		if v[i] == '\r' || v[i] == '\n' {
			return CodeInvalidHeader
		}
	}
	return 0
}

// asciiLowerEq compares s, folded to ASCII lower case, with lower.
func asciiLowerEq(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// checkHeaderFields validates a client frame's headers: grammar first, then reserved keys.
func checkHeaderFields(h []HeaderField) Code {
	if len(h) > maxHeaders {
		return CodeInvalidHeader
	}
	reserved := false
	for _, f := range h {
		switch checkHeaderKey(f.Key) {
		case CodeInvalidHeader:
			return CodeInvalidHeader
		case CodeReservedHeader:
			reserved = true
		}
		if checkHeaderValue(f.Value) != 0 {
			return CodeInvalidHeader
		}
	}
	if reserved {
		return CodeReservedHeader
	}
	return 0
}

// checkHeaderMap is checkHeaderFields for the user-facing Header type.
func checkHeaderMap(h Header) Code {
	if len(h) > maxHeaders {
		return CodeInvalidHeader
	}
	reserved := false
	for k, v := range h {
		switch checkHeaderKey(k) {
		case CodeInvalidHeader:
			return CodeInvalidHeader
		case CodeReservedHeader:
			reserved = true
		}
		if checkHeaderValue(v) != 0 {
			return CodeInvalidHeader
		}
	}
	if reserved {
		return CodeReservedHeader
	}
	return 0
}

// validMsgID reports whether id is a valid PUB msg_id (section 16.5): 1 to 128 bytes of printable
// ASCII without spaces.
func validMsgID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= 0x20 || id[i] >= 0x7f {
			return false
		}
	}
	return true
}
