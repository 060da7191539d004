package busgate

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
	Header  Header

	// DeliveryID is set only on subscriptions with explicit acknowledgement (reserved, section 16).
	DeliveryID uint64

	Sub  *Subscription // the subscription it arrived on; nil for published messages and replies
	conn *Conn
}

// Tenant returns the tenant that published the message, from the gateway-set header.
func (m *Msg) Tenant() string { return m.Header[HeaderTenant] }

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
	return c.publish(m.Reply, "", reply.Header, reply.Data)
}
