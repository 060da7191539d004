package busgate

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// serverURL is a parsed gateway URL (docs/protocol.md section 2.5).
type serverURL struct {
	raw  string
	host string // without brackets, for SNI
	addr string // host:port to dial
	tls  bool
}

func parseURL(s string) (serverURL, error) {
	raw := s
	if !strings.Contains(s, "://") {
		s = "busgate://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return serverURL{}, fmt.Errorf("%w: %q: %v", ErrInvalidURL, raw, err)
	}
	var useTLS bool
	switch strings.ToLower(u.Scheme) {
	case "busgate":
	case "busgate+tls":
		useTLS = true
	case "ws", "wss":
		return serverURL{}, fmt.Errorf("%w: %q: the WebSocket transport is not implemented by this client; use busgate:// or busgate+tls://", ErrInvalidURL, raw)
	default:
		return serverURL{}, fmt.Errorf("%w: %q: unknown scheme %q", ErrInvalidURL, raw, u.Scheme)
	}
	if u.User != nil {
		return serverURL{}, fmt.Errorf("%w: %q: URLs carry no credentials; use the Token option", ErrInvalidURL, raw)
	}
	host := u.Hostname()
	if host == "" {
		return serverURL{}, fmt.Errorf("%w: %q: no host", ErrInvalidURL, raw)
	}
	port := u.Port()
	if port == "" {
		port = strconv.Itoa(DefaultPort)
	} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return serverURL{}, fmt.Errorf("%w: %q: bad port", ErrInvalidURL, raw)
	}
	return serverURL{raw: raw, host: host, addr: net.JoinHostPort(host, port), tls: useTLS}, nil
}
