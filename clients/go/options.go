package busgate

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"
)

// Version is this client library's version, sent in HELLO opts.
const Version = "0.1.0"

// Defaults of Options.
const (
	DefaultPort              = 7422
	DefaultTimeout           = 5 * time.Second
	DefaultReconnectWait     = 100 * time.Millisecond
	DefaultMaxReconnectWait  = 5 * time.Second
	DefaultReconnectJitter   = 0.5
	DefaultReconnectBufSize  = 8 * 1024 * 1024
	DefaultPendingMsgsLimit  = 65536
	DefaultPendingBytesLimit = 64 * 1024 * 1024
)

// MsgHandler processes messages of an asynchronous subscription.
type MsgHandler func(*Msg)

// ConnHandler is called on connection events.
type ConnHandler func(*Conn)

// ConnErrHandler is called when the connection is lost, with the reason.
type ConnErrHandler func(*Conn, error)

// ErrHandler is called with asynchronous errors: an ERR about a PUB sent without ack, an error
// about a subscription (sub is then non-nil), SLOW_CONSUMER_WARNING, a local slow consumer, or an
// ERR code this client does not know.
type ErrHandler func(c *Conn, sub *Subscription, err error)

// GoAwayHandler is called when the gateway announces that it is draining (section 14). The client
// moves to a new connection by itself; the handler is informational.
type GoAwayHandler func(c *Conn, g GoAway)

// GoAway is the content of a GOAWAY frame.
type GoAway struct {
	Delay   time.Duration
	Reason  string
	Servers []string
}

// Options configure a Conn. Use the Option functions with Connect.
type Options struct {
	URL     string   // the gateway: busgate://, busgate+tls://, ws:// or wss:// (see Connect)
	Servers []string // further gateway URLs to try, in order, after URL

	Token string // the tenant's bearer token (HELLO auth method "token")
	Name  string // client name for the gateway's logs (at most 128 bytes)

	TLSConfig *tls.Config // for busgate+tls:// and wss://; ServerName defaults to the URL's host
	// RootCAs, when set, replaces TLSConfig.RootCAs: the CAs the gateway's certificate is verified
	// against.
	RootCAs *x509.CertPool
	// ClientCerts are added to TLSConfig.Certificates: the client certificates offered to a
	// gateway that requires them (mTLS, gateway setting tls.client_ca_file).
	ClientCerts []tls.Certificate
	Timeout     time.Duration // connecting: TCP, TLS and the HELLO/WELCOME handshake

	// Heartbeat asks the gateway for this heartbeat interval (HELLO opts heartbeat_ms); the gateway
	// clamps it. 0 leaves the choice to the gateway.
	Heartbeat time.Duration
	// MaxFrame asks for a smaller maximum frame size (HELLO opts max_frame); 0: the gateway's.
	MaxFrame int

	AllowReconnect   bool          // reconnect after a lost connection (default true)
	MaxReconnects    int           // rounds over the servers before giving up; < 0: never give up (default)
	ReconnectWait    time.Duration // backoff before the second round; doubles each round
	MaxReconnectWait time.Duration // backoff cap
	ReconnectJitter  float64       // fraction of each backoff that is random, 0..1
	ReconnectBufSize int           // bytes of publishes buffered while disconnected; < 0: none

	PendingMsgsLimit  int // per subscription: messages queued for the handler before drops
	PendingBytesLimit int // per subscription: bytes queued for the handler before drops

	DisconnectedErrCB ConnErrHandler
	ReconnectedCB     ConnHandler
	ClosedCB          ConnHandler
	AsyncErrorCB      ErrHandler
	GoAwayCB          GoAwayHandler
}

// Option sets an option of a connection.
type Option func(*Options) error

// GetDefaultOptions returns the default options.
func GetDefaultOptions() Options {
	return Options{
		Timeout:           DefaultTimeout,
		AllowReconnect:    true,
		MaxReconnects:     -1,
		ReconnectWait:     DefaultReconnectWait,
		MaxReconnectWait:  DefaultMaxReconnectWait,
		ReconnectJitter:   DefaultReconnectJitter,
		ReconnectBufSize:  DefaultReconnectBufSize,
		PendingMsgsLimit:  DefaultPendingMsgsLimit,
		PendingBytesLimit: DefaultPendingBytesLimit,
	}
}

// Token sets the tenant's bearer token.
func Token(token string) Option {
	return func(o *Options) error { o.Token = token; return nil }
}

// Name sets the client name shown in the gateway's logs.
func Name(name string) Option {
	return func(o *Options) error { o.Name = name; return nil }
}

// Servers adds gateway URLs to try after the one given to Connect.
func Servers(urls ...string) Option {
	return func(o *Options) error {
		for _, u := range urls {
			if _, err := parseURL(u); err != nil {
				return err
			}
		}
		o.Servers = append(o.Servers, urls...)
		return nil
	}
}

// TLSConfig sets the TLS configuration used for busgate+tls:// and wss:// URLs. The gateway's
// certificate is verified against cfg.RootCAs (the system roots when nil) unless
// cfg.InsecureSkipVerify is set. Client certificates for mTLS go in cfg.Certificates (or
// cfg.GetClientCertificate), or are added with ClientCert.
func TLSConfig(cfg *tls.Config) Option {
	return func(o *Options) error { o.TLSConfig = cfg; return nil }
}

// ClientCert loads a client certificate chain and its private key from PEM files and offers it in
// the TLS handshake of busgate+tls:// and wss:// URLs, for gateways that require client
// certificates (mTLS). It adds to the certificates of TLSConfig.
func ClientCert(certFile, keyFile string) Option {
	return func(o *Options) error {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("%w: client certificate: %v", ErrInvalidArg, err)
		}
		o.ClientCerts = append(o.ClientCerts, cert)
		return nil
	}
}

// ClientCertificate offers an already loaded client certificate, like ClientCert.
func ClientCertificate(cert tls.Certificate) Option {
	return func(o *Options) error {
		if len(cert.Certificate) == 0 {
			return fmt.Errorf("%w: client certificate without a certificate", ErrInvalidArg)
		}
		o.ClientCerts = append(o.ClientCerts, cert)
		return nil
	}
}

// RootCAs loads PEM CA certificates from files and verifies the gateway's certificate against them
// instead of the system roots (or TLSConfig.RootCAs).
func RootCAs(files ...string) Option {
	return func(o *Options) error {
		pool := x509.NewCertPool()
		for _, f := range files {
			pem, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("%w: root CAs: %v", ErrInvalidArg, err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%w: root CAs: no PEM certificate in %s", ErrInvalidArg, f)
			}
		}
		o.RootCAs = pool
		return nil
	}
}

// Timeout sets the time allowed to connect, including the TLS and busgate handshakes.
func Timeout(d time.Duration) Option {
	return func(o *Options) error {
		if d <= 0 {
			return fmt.Errorf("%w: timeout must be positive", ErrInvalidArg)
		}
		o.Timeout = d
		return nil
	}
}

// Heartbeat asks the gateway for a heartbeat interval (section 13).
func Heartbeat(d time.Duration) Option {
	return func(o *Options) error {
		if d < time.Millisecond {
			return fmt.Errorf("%w: heartbeat below 1 ms", ErrInvalidArg)
		}
		o.Heartbeat = d
		return nil
	}
}

// NoReconnect disables reconnecting: a lost connection closes the Conn.
func NoReconnect() Option {
	return func(o *Options) error { o.AllowReconnect = false; return nil }
}

// MaxReconnects sets how many rounds over the servers the client makes before it gives up and
// closes; a negative number never gives up.
func MaxReconnects(n int) Option {
	return func(o *Options) error { o.MaxReconnects = n; return nil }
}

// ReconnectBackoff sets the exponential backoff between reconnect rounds: the first wait, the cap,
// and the random fraction of each wait (0: none, 1: anywhere between 0 and the wait).
func ReconnectBackoff(initial, max time.Duration, jitter float64) Option {
	return func(o *Options) error {
		if initial <= 0 || max < initial || jitter < 0 || jitter > 1 {
			return fmt.Errorf("%w: reconnect backoff", ErrInvalidArg)
		}
		o.ReconnectWait, o.MaxReconnectWait, o.ReconnectJitter = initial, max, jitter
		return nil
	}
}

// ReconnectBufSize sets how many bytes of publishes are kept while disconnected; a negative size
// makes publishing fail at once while disconnected.
func ReconnectBufSize(n int) Option {
	return func(o *Options) error { o.ReconnectBufSize = n; return nil }
}

// PendingLimits sets the default limits of messages and bytes queued per subscription.
func PendingLimits(msgs, bytes int) Option {
	return func(o *Options) error {
		if msgs <= 0 || bytes <= 0 {
			return fmt.Errorf("%w: pending limits must be positive", ErrInvalidArg)
		}
		o.PendingMsgsLimit, o.PendingBytesLimit = msgs, bytes
		return nil
	}
}

// DisconnectErrHandler is called when the connection is lost.
func DisconnectErrHandler(cb ConnErrHandler) Option {
	return func(o *Options) error { o.DisconnectedErrCB = cb; return nil }
}

// ReconnectHandler is called after a reconnect (or a move after GOAWAY) has completed.
func ReconnectHandler(cb ConnHandler) Option {
	return func(o *Options) error { o.ReconnectedCB = cb; return nil }
}

// ClosedHandler is called once the Conn is closed.
func ClosedHandler(cb ConnHandler) Option {
	return func(o *Options) error { o.ClosedCB = cb; return nil }
}

// ErrorHandler is called with asynchronous errors.
func ErrorHandler(cb ErrHandler) Option {
	return func(o *Options) error { o.AsyncErrorCB = cb; return nil }
}

// OnGoAway sets a handler called when the gateway sends GOAWAY.
func OnGoAway(cb GoAwayHandler) Option {
	return func(o *Options) error { o.GoAwayCB = cb; return nil }
}

// MaxFrame asks the gateway for a smaller maximum frame size (HELLO opts max_frame, section 6.5);
// the spec advises against less than 65535.
func MaxFrame(n int) Option {
	return func(o *Options) error {
		if n <= 0 {
			return fmt.Errorf("%w: max frame must be positive", ErrInvalidArg)
		}
		o.MaxFrame = n
		return nil
	}
}
