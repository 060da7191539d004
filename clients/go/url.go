package busgate

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// WSPath is the WebSocket endpoint of the gateway's HTTP listener (docs/protocol.md section 2.4),
// used for ws:// and wss:// URLs that give no path.
const WSPath = "/v1/ws"

// serverURL is a parsed gateway URL (docs/protocol.md section 2.5).
type serverURL struct {
	raw  string
	host string // without brackets, for SNI
	addr string // host:port to dial
	tls  bool   // busgate+tls:// or wss://
	ws   bool   // ws:// or wss://
	path string // WebSocket only: the request path (and query)
}

// key identifies the endpoint: two URLs with the same key reach the same listener the same way.
func (u serverURL) key() string {
	scheme := "busgate"
	switch {
	case u.ws && u.tls:
		scheme = "wss"
	case u.ws:
		scheme = "ws"
	case u.tls:
		scheme = "busgate+tls"
	}
	return scheme + "://" + u.addr + u.path
}

// wsURL is the URL of the WebSocket upgrade request.
func (u serverURL) wsURL() string {
	scheme := "http"
	if u.tls {
		scheme = "https"
	}
	return scheme + "://" + u.addr + u.path
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
	var useTLS, useWS bool
	defPort := DefaultPort
	switch strings.ToLower(u.Scheme) {
	case "busgate":
	case "busgate+tls":
		useTLS = true
	case "ws":
		useWS, defPort = true, 80
	case "wss":
		useWS, useTLS, defPort = true, true, 443
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
		port = strconv.Itoa(defPort)
	} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return serverURL{}, fmt.Errorf("%w: %q: bad port", ErrInvalidURL, raw)
	}
	su := serverURL{raw: raw, host: host, addr: net.JoinHostPort(host, port), tls: useTLS, ws: useWS}
	if useWS {
		su.path = u.EscapedPath()
		if su.path == "" || su.path == "/" {
			su.path = WSPath // section 2.5: a ws:// or wss:// URL without a path means /v1/ws
		}
		if u.RawQuery != "" {
			su.path += "?" + u.RawQuery
		}
	}
	return su, nil
}
