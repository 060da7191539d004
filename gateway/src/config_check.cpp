#include "config_check.hpp"

#include <algorithm>

#include "tenancy.hpp"

namespace busgate::gw {
namespace {

[[noreturn]] void fail(const std::string& key, const std::string& what) { throw ConfigError(key + ": " + what); }

bool node_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

std::string tenant_key(size_t i) { return "tenants[" + std::to_string(i) + "]"; }
std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// Why the subjects of `pattern` are the bus's own, or "" when they are not. Only the first token
// counts: `$…` is NATS's (system account, JetStream API, acknowledgements), `_INBOX.…` holds the
// reply inboxes of gateways and NATS clients, `_BUSGATE…` the gateways' internal subjects.
std::string reserved_space(std::string_view pattern) {
  const auto first = pattern.substr(0, pattern.find('.'));
  if (first.starts_with('$')) return "subjects starting with '$' are NATS's own (system, JetStream API)";
  if (first == "_INBOX") return "'_INBOX.' subjects are reply inboxes";
  if (first.starts_with("_BUSGATE")) return "'_BUSGATE' subjects are the gateways' own";
  return {};
}

// Tenant namespaces: no two overlap, and none lies in a reserved space.
void check_prefixes(const std::vector<TenantConfig>& ts) {
  for (size_t j = 0; j < ts.size(); ++j) {
    const std::string& p = ts[j].prefix;
    const std::string key = tenant_key(j) + ".prefix";
    if (const auto why = reserved_space(p); !why.empty()) fail(key, quoted(p) + " is reserved: " + why);
    for (size_t i = 0; i < j; ++i) {
      const std::string& q = ts[i].prefix;
      if (!p.starts_with(q) && !q.starts_with(p)) continue;
      const std::string other = tenant_key(i) + ".prefix " + quoted(q);
      if (p == q) fail(key, quoted(p) + " is also " + other);
      const std::string how = p.size() < q.size() ? "contains" : "lies inside";
      const std::string rule =
          p.empty() || q.empty() ? "an empty prefix is allowed only for a tenant on its own" : "namespaces must not nest";
      fail(key, quoted(p) + " overlaps " + other + " (its namespace " + how + " that tenant's; " + rule + ")");
    }
  }
}

// Imports: `to` lies outside every tenant's namespace and outside the reserved spaces; `from` is a
// subject a client can use.
void check_imports(const std::vector<TenantConfig>& ts) {
  for (size_t j = 0; j < ts.size(); ++j)
    for (size_t k = 0; k < ts[j].imports.size(); ++k) {
      const Import& imp = ts[j].imports[k];
      const std::string key = tenant_key(j) + ".imports[" + std::to_string(k) + "]";
      if (const auto why = reserved_space(imp.from); !why.empty())
        fail(key + ".from", quoted(imp.from) + " is reserved: " + why + "; no import may start there");
      if (imp.to == ">") fail(key + ".to", "'>' is the whole bus, every tenant's namespace included");
      if (const auto why = reserved_space(imp.to); !why.empty())
        fail(key + ".to", quoted(imp.to) + " is reserved: " + why);
      for (size_t i = 0; i < ts.size(); ++i)
        if (patterns_overlap(imp.to, ts[i].prefix + ">"))
          fail(key + ".to", quoted(imp.to) + " overlaps " + tenant_key(i) + ".prefix " + quoted(ts[i].prefix) +
                                " (tenant '" + ts[i].name +
                                "'): imports reach only subjects outside every tenant's namespace");
    }
}

}  // namespace

bool valid_node_id(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), node_char);
}

std::string node_id_from(std::string_view text) {
  std::string out(text.substr(0, 64));
  for (auto& c : out)
    if (!node_char(c)) c = '-';
  return out;
}

void check_isolation(const std::vector<TenantConfig>& tenants) {
  check_prefixes(tenants);
  check_imports(tenants);
}

}  // namespace busgate::gw
