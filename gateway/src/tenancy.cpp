#include "tenancy.hpp"

#include <openssl/crypto.h>

#include <algorithm>

#include "busgate/protocol/subject.hpp"

namespace busgate::gw {
namespace {

// "a.b.>" → "a.b"; ">" → ""; an exact subject → nullopt.
std::optional<std::string_view> prefix_head(std::string_view pattern) {
  if (pattern == ">") return std::string_view{};
  if (pattern.size() > 2 && pattern.ends_with(".>")) return pattern.substr(0, pattern.size() - 2);
  return std::nullopt;
}

// Applies an import when `subject` (a literal or a pattern) lies inside its `from`.
std::optional<Mapping> apply_import(const Import& imp, std::string_view subject) {
  const auto head = prefix_head(imp.from);
  if (!head) {
    if (subject != imp.from) return std::nullopt;
    return Mapping{imp.to, std::string(imp.from), imp.to};  // exact: map_back compares whole subjects
  }
  const std::string client_prefix = head->empty() ? std::string{} : std::string(*head) + ".";
  if (!subject.starts_with(client_prefix) || subject.size() == client_prefix.size()) return std::nullopt;
  const auto to_head = *prefix_head(imp.to);
  const std::string bus_prefix = to_head.empty() ? std::string{} : std::string(to_head) + ".";
  return Mapping{bus_prefix + std::string(subject.substr(client_prefix.size())), client_prefix, bus_prefix};
}

Mapping map_with(const TenantConfig& t, std::string_view subject, Import::Kind kind) {
  for (const auto& imp : t.imports) {
    if (imp.kind != kind) continue;
    if (auto m = apply_import(imp, subject)) return *m;
  }
  return Mapping{t.prefix + std::string(subject), std::string{}, t.prefix};
}

}  // namespace

bool pattern_covers(std::string_view outer, std::string_view inner) {
  const auto o = proto::subject_tokens(outer);
  const auto in = proto::subject_tokens(inner);
  size_t i = 0;
  for (; i < o.size(); ++i) {
    if (o[i] == ">") return i < in.size();
    if (i >= in.size()) return false;
    if (in[i] == ">") return false;
    if (o[i] == "*") continue;
    if (o[i] != in[i]) return false;
  }
  return i == in.size();
}

bool patterns_overlap(std::string_view a, std::string_view b) {
  const auto x = proto::subject_tokens(a);
  const auto y = proto::subject_tokens(b);
  size_t i = 0;
  for (; i < x.size() && i < y.size(); ++i) {
    if (x[i] == ">" || y[i] == ">") return true;
    if (x[i] == "*" || y[i] == "*") continue;
    if (x[i] != y[i]) return false;
  }
  return x.size() == y.size();
}

bool subject_allowed(const PatternRules& rules, std::string_view subject) {
  bool ok = false;
  for (const auto& a : rules.allow)
    if (proto::subject_matches(a, subject)) {
      ok = true;
      break;
    }
  if (!ok) return false;
  for (const auto& d : rules.deny)
    if (proto::subject_matches(d, subject)) return false;
  return true;
}

RuleCheck subscription_allowed(const PatternRules& rules, std::string_view pattern) {
  RuleCheck r;
  for (const auto& a : rules.allow)
    if (pattern_covers(a, pattern)) {
      r.allowed = true;
      break;
    }
  if (!r.allowed) return r;
  for (const auto& d : rules.deny) {
    if (pattern_covers(d, pattern)) return RuleCheck{};
    if (patterns_overlap(d, pattern)) r.needs_filter = true;
  }
  return r;
}

Mapping map_outbound(const TenantConfig& t, std::string_view subject) {
  return map_with(t, subject, Import::Kind::service);
}

void map_outbound_subject(const TenantConfig& t, std::string_view subject, std::string& out) {
  for (const auto& imp : t.imports)
    if (imp.kind == Import::Kind::service)
      if (auto m = apply_import(imp, subject)) {
        out = std::move(m->bus_subject);
        return;
      }
  out.assign(t.prefix).append(subject);
}

Mapping map_subscription(const TenantConfig& t, std::string_view pattern) {
  return map_with(t, pattern, Import::Kind::stream);
}

std::optional<std::string> map_back(const Mapping& m, std::string_view bus_subject) {
  if (!m.bus_prefix.empty() && m.bus_prefix.back() != '.') {  // exact import
    if (bus_subject != m.bus_prefix) return std::nullopt;
    return m.client_prefix;
  }
  if (!bus_subject.starts_with(m.bus_prefix)) return std::nullopt;
  return m.client_prefix + std::string(bus_subject.substr(m.bus_prefix.size()));
}

void TokenBucket::configure(double rate) {
  rate_ = rate;
  tokens_ = rate;
  last_ = std::chrono::steady_clock::now();
}

bool TokenBucket::take(double n, std::chrono::steady_clock::time_point now) {
  if (rate_ <= 0) return true;
  const double elapsed = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  tokens_ = std::min(rate_, tokens_ + elapsed * rate_);  // burst: one second's worth
  if (tokens_ < n) return false;
  tokens_ -= n;
  return true;
}

void TenantState::set_config(std::shared_ptr<const TenantConfig> c) {
  {
    std::lock_guard lk(bucket_mu_);
    const auto* old = config_.get();
    if (!old || old->limits.publish_msgs_per_sec != c->limits.publish_msgs_per_sec)
      msg_bucket_.configure(c->limits.publish_msgs_per_sec);
    if (!old || old->limits.publish_bytes_per_sec != c->limits.publish_bytes_per_sec)
      byte_bucket_.configure(c->limits.publish_bytes_per_sec);
    unlimited_publish_ = c->limits.publish_msgs_per_sec <= 0 && c->limits.publish_bytes_per_sec <= 0;
  }
  {
    std::lock_guard lk(mu_);
    config_ = std::move(c);
  }
  removed_ = false;
  generation_.fetch_add(1, std::memory_order_release);
}

ByteBudget& TenantState::queued_budget(uint64_t max_bytes) {
  std::lock_guard lk(mu_);
  if (!queued_) queued_ = std::make_unique<ByteBudget>(max_bytes);
  return *queued_;
}

uint64_t TenantState::queued_bytes() const {
  std::lock_guard lk(mu_);
  return queued_ ? queued_->used() : 0;
}

std::shared_ptr<DeliveryLane> TenantState::lane(size_t max_backlog_bytes, uint64_t max_tenant_queued, ByteBudget* node,
                                                std::atomic<uint64_t>* budget_drops) {
  ByteBudget& tenant = queued_budget(max_tenant_queued);
  std::lock_guard lk(mu_);
  if (!lane_) {
    lane_ = std::make_shared<DeliveryLane>(max_backlog_bytes);
    lane_->set_budgets(&tenant, node, budget_drops);
  }
  return lane_;
}

bool TenantState::try_acquire_connection() {
  const auto max = static_cast<int>(config()->limits.max_connections);
  int cur = connections_.load();
  while (cur < max)
    if (connections_.compare_exchange_weak(cur, cur + 1)) return true;
  return false;
}

bool TenantState::try_acquire_request() {
  const auto max = static_cast<int>(config()->limits.max_inflight_requests);
  int cur = inflight_.load();
  while (cur < max)
    if (inflight_.compare_exchange_weak(cur, cur + 1)) return true;
  return false;
}

bool TenantState::try_publish_limited(size_t bytes) {
  std::lock_guard lk(bucket_mu_);
  const auto now = std::chrono::steady_clock::now();
  TokenBucket msg_copy = msg_bucket_;
  if (!msg_bucket_.take(1, now)) return false;
  if (!byte_bucket_.take(static_cast<double>(bytes), now)) {
    msg_bucket_ = msg_copy;  // give the message token back
    return false;
  }
  return true;
}

void TenantRegistry::load(const std::vector<TenantConfig>& tenants) {
  std::lock_guard lk(mu_);
  for (auto& [name, st] : tenants_) {
    const bool present = std::any_of(tenants.begin(), tenants.end(), [&](const auto& t) { return t.name == name; });
    if (!present) st->mark_removed();
  }
  for (const auto& t : tenants) {
    auto& st = tenants_[t.name];
    if (!st) st = std::make_shared<TenantState>(t.name);
    st->set_config(std::make_shared<const TenantConfig>(t));
  }
}

std::optional<TenantRegistry::AuthResult> TenantRegistry::authenticate(std::string_view token) const {
  const std::string digest = sha256_hex(token);
  std::lock_guard lk(mu_);
  std::shared_ptr<TenantState> found;
  for (const auto& [name, st] : tenants_) {
    if (st->removed()) continue;
    const auto cfg = st->config();
    for (const auto& d : cfg->token_sha256) {
      // Every digest is compared in full, whether or not an earlier one matched.
      const bool eq = d.size() == digest.size() && CRYPTO_memcmp(d.data(), digest.data(), d.size()) == 0;
      if (eq) found = st;
    }
  }
  if (!found) return std::nullopt;
  return AuthResult{found, digest};
}

bool TenantRegistry::still_valid(const TenantState& t, const std::string& digest) const {
  if (t.removed()) return false;
  const auto cfg = t.config();
  return std::find(cfg->token_sha256.begin(), cfg->token_sha256.end(), digest) != cfg->token_sha256.end();
}

std::vector<std::shared_ptr<TenantState>> TenantRegistry::all() const {
  std::lock_guard lk(mu_);
  std::vector<std::shared_ptr<TenantState>> out;
  for (const auto& [n, st] : tenants_) out.push_back(st);
  return out;
}

}  // namespace busgate::gw
