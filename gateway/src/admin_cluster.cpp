#include "admin_cluster.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <string_view>

#include "bus.hpp"
#include "server.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {
constexpr std::string_view kPrefix = "_BUSGATE.admin.";
constexpr auto kStartupWait = std::chrono::milliseconds(500);

AdminJson parse(std::string_view payload) {
  auto j = AdminJson::parse(payload, nullptr, false);
  return j.is_discarded() || !j.is_object() ? AdminJson::object() : j;
}
}  // namespace

AdminCluster::AdminCluster(Server& server, asio::io_context& ctx)
    : server_(server),
      ctx_(ctx),
      node_(server.node_id()),
      node_prefix_(std::string(kPrefix) + "node." + server.node_id() + "."),
      reply_prefix_(node_prefix_ + "reply.") {}

AdminCluster::~AdminCluster() { stop(); }

void AdminCluster::start() {
  if (started_ || std::string_view(server_.bus().kind()) != "nats") return;
  started_ = true;
  std::weak_ptr<AdminCluster> weak = weak_from_this();
  // Deliveries arrive on the bus's thread: the work happens on ctx_.
  auto on = [this, weak](auto handler) {
    return [this, weak, handler](const BusMessagePtr& m) {
      asio::post(ctx_, [weak, handler, m] {
        auto self = weak.lock();
        if (!self) return;
        try {
          handler(*self, *m);
        } catch (const std::exception& e) {  // a malformed message on the bus (wrong JSON types)
          spdlog::warn("admin: ignored a message on {}: {}", m->subject, e.what());
        }
      });
    };
  };
  Bus& bus = server_.bus();
  // Two subscriptions per node: what every node hears, and what is addressed to this one.
  const std::string all = std::string(kPrefix) + "all.";
  subs_.push_back(bus.subscribe(all + ">", "", on([all](AdminCluster& self, const BusMessage& m) {
    const std::string_view rest = m.subject.substr(all.size());
    if (rest.starts_with("q."))
      self.on_question(std::string(rest.substr(2)), std::string(m.reply_to), std::string(m.payload));
    else if (rest == "refusal")
      self.on_refusal(std::string(m.payload));
  })));
  subs_.push_back(bus.subscribe(node_prefix_ + ">", "", on([](AdminCluster& self, const BusMessage& m) {
    const std::string_view rest = m.subject.substr(self.node_prefix_.size());
    if (rest == "close")
      self.on_close(std::string(m.reply_to), std::string(m.payload));
    else if (rest.starts_with("reply."))
      self.on_answer(std::string(m.subject), std::string(m.payload));
  })));
  asio::post(ctx_, [weak] {
    if (auto self = weak.lock()) self->say_hello();
  });
}

void AdminCluster::say_hello() {
  if (server_.bus().healthy()) {
    hello_timer_.reset();
    return gather("hello", kStartupWait, [](Answers, std::vector<std::string>) {});
  }
  if (!hello_timer_) hello_timer_ = std::make_unique<asio::steady_timer>(ctx_);
  hello_timer_->expires_after(std::chrono::milliseconds(200));
  hello_timer_->async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->say_hello();
  });
}

void AdminCluster::post(std::function<void()> fn) { asio::post(ctx_, std::move(fn)); }

void AdminCluster::stop() {
  for (const uint64_t id : subs_)
    if (id) server_.bus().unsubscribe(id);
  subs_.clear();
}

void AdminCluster::publish(const std::string& subject, const std::string& reply_to, const std::string& payload) {
  server_.bus().publish(std::make_shared<const BusMessage>(subject, reply_to, std::string_view{}, payload), true);
}

void AdminCluster::reply(const std::string& reply_to, const AdminJson& body) {
  if (!reply_to.starts_with(std::string(kPrefix) + "node.")) return;
  std::string text = AdminJson{{"node", node_}, {"body", body}}.dump();
  const size_t max = server_.bus().max_message();
  if (max && text.size() + 1024 > max)
    text = AdminJson{{"node", node_},
                     {"body",
                      {{"error", "the answer of " + std::to_string(text.size()) +
                                     " bytes is above the bus's message size; ask this node directly"}}}}
               .dump();
  publish(reply_to, {}, text);
}

void AdminCluster::saw(const std::string& node) {
  if (!node.empty() && node != node_) known_[node] = Clock::now();
}

std::vector<std::string> AdminCluster::known_nodes() const {
  std::vector<std::string> out;
  for (const auto& [n, t] : known_) out.push_back(n);
  return out;
}

void AdminCluster::gather(const std::string& view, std::chrono::milliseconds wait, GatherFn done) {
  ask(std::string(kPrefix) + "all.q." + view, AdminJson{{"from", node_}}, false, wait, std::move(done));
}

void AdminCluster::close_on(const std::string& node, const CloseRequest& req, std::chrono::milliseconds wait,
                            std::function<void(std::optional<AdminAnswer>)> done) {
  AdminJson q{{"from", node_}, {"id", req.id}, {"refuse_for_ms", req.refuse_for_ms}};
  if (req.by) q["by"] = by_name(*req.by);
  ask(std::string(kPrefix) + "node." + node + ".close", q, true, wait,
      [done = std::move(done)](Answers answers, std::vector<std::string>) {
        if (answers.empty()) return done(std::nullopt);
        const AdminJson& b = answers.front().body;
        AdminAnswer a;
        a.status = b.value("status", 502);
        a.body = b.contains("body") ? b["body"] : AdminJson::object();
        done(std::move(a));
      });
}

void AdminCluster::ask(const std::string& subject, const AdminJson& question, bool first_ends,
                       std::chrono::milliseconds wait, GatherFn done) {
  if (!started_) return done({}, {});
  uint64_t token = random_token();
  while (pending_.count(token)) token = random_token();
  Pending& p = pending_[token];
  p.first_ends = first_ends;
  if (!first_ends) p.asked_known = known_nodes();
  p.asked_at = Clock::now();
  p.done = std::move(done);
  p.timer = std::make_unique<asio::steady_timer>(ctx_, wait);
  p.timer->async_wait([weak = weak_from_this(), token](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->finish(token);
  });
  publish(subject, inbox_subject(reply_prefix_, token), question.dump());
}

void AdminCluster::on_answer(std::string subject, std::string payload) {
  uint64_t token = 0;
  if (!parse_inbox_token(std::string_view(subject).substr(reply_prefix_.size()), token)) return;
  auto it = pending_.find(token);
  if (it == pending_.end()) return;  // too late
  AdminJson a = parse(payload);
  if (!a.contains("node") || !a["node"].is_string()) return;
  const std::string node = a["node"].get<std::string>();
  saw(node);
  Pending& p = it->second;
  for (const auto& x : p.answers)
    if (x.node == node) return;
  p.answers.push_back({node, a.contains("body") ? a["body"] : AdminJson()});
  bool all = p.first_ends || !p.asked_known.empty();
  for (const auto& n : p.asked_known) {
    bool answered = false;
    for (const auto& x : p.answers) answered = answered || x.node == n;
    all = all && answered;
  }
  if (all) finish(token);
}

void AdminCluster::finish(uint64_t token) {
  auto it = pending_.find(token);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  p.timer->cancel();
  std::vector<std::string> missing;
  for (const auto& n : p.asked_known) {
    bool answered = false;
    for (const auto& a : p.answers) answered = answered || a.node == n;
    if (!answered) {
      missing.push_back(n);
      // Gone (or too slow): the next question does not wait for it.
      if (auto k = known_.find(n); k != known_.end() && k->second <= p.asked_at) known_.erase(k);
    }
  }
  p.done(std::move(p.answers), std::move(missing));
}

void AdminCluster::on_question(std::string view, std::string reply_to, std::string payload) {
  const AdminJson q = parse(payload);
  const std::string from = q.value("from", std::string());
  if (from == node_) return;  // our own question, echoed by the bus
  saw(from);
  reply(reply_to, is_admin_view(view) ? admin_view(server_, view) : AdminJson::object());
}

void AdminCluster::on_close(std::string reply_to, std::string payload) {
  const AdminJson q = parse(payload);
  saw(q.value("from", std::string()));
  CloseRequest req;
  req.id = q.value("id", uint64_t{0});
  req.refuse_for_ms = q.value("refuse_for_ms", uint64_t{0});
  if (q.contains("by") && q["by"].is_string()) req.by = parse_by(q["by"].get<std::string>());
  const AdminAnswer a = admin_close(server_, req);
  reply(reply_to, AdminJson{{"status", a.status}, {"body", a.body}});
}

void AdminCluster::publish_refusal(const Refusal& r) {
  if (!started_) return;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(r.until - Clock::now()).count();
  publish(std::string(kPrefix) + "all.refusal", {},
          AdminJson{{"from", node_},       {"op", "add"},   {"id", r.id},         {"by", by_name(r.by)},
                    {"tenant", r.tenant},  {"value", r.value}, {"ms_left", left > 0 ? left : 0},
                    {"node", r.node},      {"connection", r.connection}}
              .dump());
}

void AdminCluster::publish_lift(const std::string& id) {
  if (!started_) return;
  publish(std::string(kPrefix) + "all.refusal", {}, AdminJson{{"from", node_}, {"op", "lift"}, {"id", id}}.dump());
}

void AdminCluster::on_refusal(std::string payload) {
  const AdminJson q = parse(payload);
  const std::string from = q.value("from", std::string());
  if (from == node_ || from.empty()) return;
  saw(from);
  const std::string op = q.value("op", std::string());
  const std::string id = q.value("id", std::string());
  if (id.empty()) return;
  if (op == "lift") {
    server_.refusals().remove(id);
    return;
  }
  if (op != "add") return;
  const auto by = parse_by(q.value("by", std::string()));
  if (!by) return;
  Refusal r;
  r.id = id;
  r.by = *by;
  r.tenant = q.value("tenant", std::string());
  r.value = q.value("value", std::string());
  r.until = Clock::now() + std::chrono::milliseconds(q.value("ms_left", uint64_t{0}));
  r.node = q.value("node", from);
  r.connection = q.value("connection", uint64_t{0});
  server_.refusals().add(std::move(r));
}

}  // namespace busgate::gw
