package busgate

import "strings"

// Header holds a message's headers: str keys to str values (docs/protocol.md section 11). Keys are
// case-sensitive; keys starting with "busgate-" are set by gateways only (the gateway sets
// "busgate-tenant" on every relayed message, so receivers can trust it).
type Header map[string]string

// Get returns the value of key, or "".
func (h Header) Get(key string) string { return h[key] }

// Set sets key to value.
func (h Header) Set(key, value string) { h[key] = value }

// Del removes key.
func (h Header) Del(key string) { delete(h, key) }

// HeaderTenant is the header in which the gateway names the publishing tenant.
const HeaderTenant = "busgate-tenant"

// Msg is a message: one to publish, one delivered on a subscription, or a reply.
type Msg struct {
	Subject string
	Reply   string // the subject to answer on (requests and PUBs with reply_to); "" for none
	Data    []byte
	Header  Header // application headers; nil when there are none

	// Tenant is the tenant that published a received message or reply, from the busgate-tenant
	// header that the gateway sets and clients cannot (section 11). That header is moved here and
	// is not repeated in Header. Ignored when publishing.
	Tenant string

	// DeliveryID and Attempt are set on deliveries of a durable subscription (section 16.2): the
	// delivery's id on its subscription, and 1 for the first delivery of the message, 2 for the
	// first redelivery, and so on. Settle such a message with Ack, Nak or Term.
	DeliveryID uint64
	Attempt    uint64

	Sub     *Subscription // the subscription it arrived on; nil for durable deliveries, published messages and replies
	conn    *Conn
	l       *link         // the connection it arrived on
	granted bool          // it carries an _INBOX. reply subject not yet answered; guarded by conn.mu
	dsub    *Subscription // the durable subscription it was delivered on
	settled bool          // ACK, NAK or TERM sent; guarded by conn.mu
}

// Respond publishes data to the message's reply subject. A message that arrived through a request
// grants the receiving connection one publish to that subject (section 12.3).
func (m *Msg) Respond(data []byte) error {
	return m.RespondMsg(&Msg{Data: data})
}

// RespondMsg publishes reply (its Data and Header) to the message's reply subject.
func (m *Msg) RespondMsg(reply *Msg) error {
	if m.Reply == "" {
		return protoErr(CodeInvalidSubject, "the message has no reply subject")
	}
	c := m.conn
	if c == nil && m.Sub != nil {
		c = m.Sub.conn
	}
	if c == nil {
		return ErrBadSubscription
	}
	// The grant to answer an _INBOX. subject belongs to the connection the request arrived on
	// (section 12.3), so the reply goes there even after that connection received GOAWAY.
	err := c.publishVia(m.l, m.Reply, "", reply.Header, reply.Data)
	if m.l != nil {
		c.mu.Lock()
		if m.granted {
			m.granted = false
			m.l.grants.Add(-1)
			c.notifyState()
		}
		c.mu.Unlock()
	}
	return err
}

func isInbox(subject string) bool { return strings.HasPrefix(subject, "_INBOX.") }
