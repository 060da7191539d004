#pragma once
// The admin API across nodes, over the bus (docs/operations.md, "Admin API"). On NATS each node
// holds two subscriptions under `_BUSGATE.admin.` (a prefix no tenant can reach):
//   _BUSGATE.admin.all.>  every node: q.<view> (answer with its own view: connections, ...) and
//                         refusal (a refusal set or lifted on another node)
//   _BUSGATE.admin.node.<node_id>.>  this node: close (one of its connections) and reply.<token>
//                         (answers to its own questions)
// A question is answered within a bounded wait, or as soon as every node this node knows (those
// that answered or asked before, and did not miss an answer since) has answered. On the memory bus
// there is no other node: questions are answered at once with nothing.
// Runs its bookkeeping on one io_context; answers are handed to the callers there.

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "admin_views.hpp"

namespace busgate::gw {

class Server;

class AdminCluster : public std::enable_shared_from_this<AdminCluster> {
 public:
  struct Answer {
    std::string node;
    AdminJson body;
  };
  using Answers = std::vector<Answer>;
  // answers, and the nodes known before the question that did not answer
  using GatherFn = std::function<void(Answers, std::vector<std::string>)>;

  AdminCluster(Server& server, boost::asio::io_context& ctx);
  ~AdminCluster();
  // Subscribes to the admin subjects (NATS only) and asks who is there.
  void start();
  void stop();
  bool clustered() const { return started_; }
  // Runs fn on the context the questions are asked and answered on.
  void post(std::function<void()> fn);

  // Every other node's admin_view(view).
  void gather(const std::string& view, std::chrono::milliseconds wait, GatherFn done);
  // Node `node` closes a connection: its AdminAnswer as {"status", "body"}, or nullopt when it did
  // not answer within `wait`.
  void close_on(const std::string& node, const CloseRequest& req, std::chrono::milliseconds wait,
                std::function<void(std::optional<AdminAnswer>)> done);
  // Tells every other node about a refusal set or lifted here.
  void publish_refusal(const Refusal& r);
  void publish_lift(const std::string& id);

 private:
  struct Pending {
    std::unique_ptr<boost::asio::steady_timer> timer;
    bool first_ends = false;  // a question to one node: its answer ends the wait
    std::vector<std::string> asked_known;  // otherwise the wait ends once all of these answered
    std::chrono::steady_clock::time_point asked_at;
    Answers answers;
    GatherFn done;
  };
  void ask(const std::string& subject, const AdminJson& question, bool first_ends, std::chrono::milliseconds wait,
           GatherFn done);
  void finish(uint64_t token);
  void on_question(std::string view, std::string reply_to, std::string payload);
  void on_close(std::string reply_to, std::string payload);
  void on_refusal(std::string payload);
  void on_answer(std::string subject, std::string payload);
  void reply(const std::string& reply_to, const AdminJson& body);
  void publish(const std::string& subject, const std::string& reply_to, const std::string& payload);
  void saw(const std::string& node);  // ctx only
  void say_hello();  // once the bus is connected: asks who is there, so that they know this node too
  std::vector<std::string> known_nodes() const;

  Server& server_;
  boost::asio::io_context& ctx_;
  std::string node_;
  std::string node_prefix_;   // _BUSGATE.admin.node.<node_id>.
  std::string reply_prefix_;  // _BUSGATE.admin.node.<node_id>.reply.
  bool started_ = false;
  std::vector<uint64_t> subs_;
  // ctx only:
  std::map<uint64_t, Pending> pending_;
  std::map<std::string, std::chrono::steady_clock::time_point> known_;
  std::unique_ptr<boost::asio::steady_timer> hello_timer_;
};

}  // namespace busgate::gw
