// Live-room fan-out load: `chorus-bench live-fanout` (orchestrator) and `chorus-bench
// live-clients` (one subscriber process).
//
// The orchestrator measures one live server (chorus, or the Bun peer in bench/peers/) that some
// script already started, in five steps:
//   1. spawns `procs` copies of itself as `live-clients`, each holding subscribers/procs WebSocket
//      connections (JSON frames) subscribed to one room, and waits until every one says "ready"
//      (a process may hold at most 20,000 open files, so 10,000 subscribers need two processes);
//   2. starts a publisher thread posting a steady `rate` of mixed messages (gift, pk, chat,
//      notify) to the room over one keep-alive HTTP connection, in batches every 50 ms;
//   3. after `warmup`, snapshots the server's CPU time (/proc/<pid>/stat utime+stime), its
//      /metrics counters and the machine's CPU counters, and tells every client "start";
//   4. after `duration`, tells every client "stop" and snapshots again;
//   5. merges the clients' results (latency histograms travel as bucket JSON) into one
//      Measurement: deliveries/s, server CPU per million deliveries, tick-to-receipt latency,
//      drops.
//
// A delivery is one message received by one subscriber (a block of 20 messages to 10,000
// subscribers is 200,000 deliveries). Latency is per received block: receipt wall time minus the
// block's "tick_at" (the server's wall ms when the room ticked), so it includes the server's
// block assembly, the fan-out queueing over all subscribers and the client's own scheduling;
// tick_at has ms resolution, so figures read up to 1 ms high. Clients and server share the
// machine (and its clock).
//
// Client protocol (live-clients stdin/stdout, one line each): the client prints
// "ready <subscribed> <failed>" once every connection is subscribed or has failed
// `max_attempts` times; it then reads "start" (reset counters, record from now; answered with
// "started") and "stop"
// (print "result <json>" and stop recording, still connected: the close storm of thousands of
// sockets must not land in the server's measured CPU). End of stdin closes everything and ends
// the process. Progress and errors go to stderr.
//
// The client loop is one thread and one epoll set for all its connections; per connection it
// keeps a few hundred bytes. Frames are scanned, not parsed: a block's tick_at and seq are found
// by substring search, its messages counted as occurrences of "created_at". Only the JSON frame
// format (format=json) is understood.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "latency_histogram.h"
#include "report.h"

namespace chorus::bench {

// ---- pieces exposed for tests ----

// What a live JSON text frame is, found without parsing the JSON.
enum class LiveFrameKind { kBlock, kWelcome, kSubscribed, kError, kOther };
struct LiveBlockInfo {
  int64_t tick_at_ms = 0;
  uint64_t seq = 0;
  uint32_t messages = 0;
};
// Classifies `text` by its leading {"frame":"..."}; for a block fills *block (a block without a
// readable tick_at or seq is kOther).
LiveFrameKind ScanLiveFrame(std::string_view text, LiveBlockInfo* block);

// Sums of the live counters in a Prometheus text exposition, matched by name suffix so chorus
// ("chorus_live_...") and the Bun peer ("bunpeer_live_...") read the same way:
//   *_live_blocks_total, *_live_deliveries_total, *_live_published_total (all labels summed),
//   *_live_dropped_total{reason="R"} as "dropped_R", *_websocket_dropped_messages_total as
//   "ws_dropped", *_websocket_slow_consumer_closes_total as "slow_consumer_closes".
std::map<std::string, double> ParseLiveMetrics(std::string_view text);

// utime + stime in seconds from the text of /proc/<pid>/stat; an error if it does not parse.
Result<double> ParseProcStatCpuSeconds(std::string_view stat_text);

// The publisher's body for `n` messages (1..100): {"messages":[...]} with the mix 10% gift (random
// value), 10% pk, 70% chat (random sender level), 10% notify, keys in sorted order so every
// server renders the payload bytes alike. `counter` numbers the messages and advances by n.
std::string MakePublishBody(int n, uint64_t* counter, uint64_t seed);

// ---- live-clients ----

struct LiveClientsOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string target;  // "/v1/ws?format=json&token=..."
  std::string room = "r1";
  int connections = 1000;
  int concurrency = 256;  // connection attempts in flight at once
  std::chrono::nanoseconds attempt_timeout = std::chrono::seconds(15);
  int max_attempts = 3;
  int index = 0;  // which client process this is (labels, mask seeds)
};

struct LiveClientsResult {
  uint64_t connections = 0;
  uint64_t subscribed = 0;
  uint64_t failed = 0;           // gave up after max_attempts
  uint64_t disconnects = 0;      // subscribed connections the server closed or lost
  uint64_t protocol_errors = 0;  // bad frames, unexpected bytes
  uint64_t server_errors = 0;    // {"frame":"error"} frames received
  uint64_t blocks = 0;           // blocks received in the window
  uint64_t messages = 0;         // messages in those blocks (= deliveries)
  uint64_t bytes = 0;            // block payload bytes in the window
  uint64_t missed_blocks = 0;    // seq gaps seen in the window (blocks the server dropped)
  uint64_t pings = 0;            // server pings answered
  double window_s = 0;
  LatencyHistogram latency;  // tick-to-receipt per block, ns

  nlohmann::json ToJson() const;
  static Result<LiveClientsResult> FromJson(const nlohmann::json& j);
  void Merge(const LiveClientsResult& other);
};

// Runs the client loop until control_in ends; writes the protocol lines to control_out. Returns the process
// exit code (0, or 2 if it could not start).
int RunLiveClients(const LiveClientsOptions& options, int control_in, std::FILE* control_out);

// ---- live-fanout ----

struct LiveFanoutOptions {
  std::string url;            // http://127.0.0.1:PORT of the live server (the publisher's node)
  // Several nodes serving one room (live.cluster): subscriber process i connects to
  // subscriber_urls[i % size] (empty: all to `url`), and /metrics counters are summed over `url`
  // and these (each distinct node once).
  std::vector<std::string> subscriber_urls;
  std::string ws_target;      // WebSocket target incl. query ("/v1/ws?format=json&token=...")
  std::string publish_token;  // bearer token for POST; empty = no Authorization header
  std::string room = "r1";
  int subscribers = 1000;
  int procs = 2;
  double rate = 100;  // messages per second
  std::chrono::nanoseconds warmup = std::chrono::seconds(3);
  std::chrono::nanoseconds duration = std::chrono::seconds(20);
  std::chrono::nanoseconds ready_timeout = std::chrono::seconds(300);
  // Whose CPU to measure, summed (the nodes of a fleet); empty or 0 = do not measure.
  std::vector<pid_t> server_pids;
  // Supporting servers (nats-server, redis-server) whose CPU is reported apart, summed.
  std::vector<pid_t> infra_pids;
  uint64_t seed = 1;
  std::string self_exe;  // this binary, spawned as live-clients
};

// Runs the whole measurement and returns it as the subject of a report (system name filled in by
// the caller). Fails only when the run cannot start (bad options, clients not ready in time,
// nobody subscribed); errors during the run are counted in the result.
Result<Measurement> RunLiveFanout(const LiveFanoutOptions& options);

}  // namespace chorus::bench
