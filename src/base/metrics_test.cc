#include "base/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <thread>

namespace chorus {
namespace {

// ---- A strict parser for the Prometheus text exposition format 0.0.4 ----------------------
//
// Stricter than Prometheus where our output has no reason to differ (every sample belongs to
// a family announced by TYPE, no blank lines, final newline required), and it checks the
// semantic rules a scraper relies on: escapes, unique series, counters non-negative, and for
// histograms buckets in increasing le order, cumulative, ending in +Inf equal to _count.

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct ParsedFamily {
  std::string name;
  std::string type;
  std::optional<std::string> help;
  std::vector<Sample> samples;
};

class ExpositionParser {
 public:
  Result<std::vector<ParsedFamily>> Parse(std::string_view text) {
    if (!text.empty() && text.back() != '\n') return Error("missing final newline");
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t end = text.find('\n', pos);
      line_ = text.substr(pos, end - pos);
      ++line_no_;
      pos = end + 1;
      Status s = ParseLine();
      if (!s.ok()) return s;
    }
    Status s = CloseFamily();
    if (!s.ok()) return s;
    return std::move(families_);
  }

 private:
  Status Error(std::string_view what) const {
    return InvalidArgument("line " + std::to_string(line_no_) + ": " + std::string(what) + " in '" +
                           std::string(line_) + "'");
  }

  static bool MetricChar(char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
  }
  static bool LabelChar(char c, bool first) { return c != ':' && MetricChar(c, first); }

  // Consumes a name from rest_; empty if none.
  std::string TakeName(bool label) {
    size_t n = 0;
    while (n < rest_.size() && (label ? LabelChar(rest_[n], n == 0) : MetricChar(rest_[n], n == 0))) ++n;
    std::string name(rest_.substr(0, n));
    rest_.remove_prefix(n);
    return name;
  }

  static std::optional<double> ParseValue(std::string_view s) {
    if (s == "+Inf" || s == "Inf") return std::numeric_limits<double>::infinity();
    if (s == "-Inf") return -std::numeric_limits<double>::infinity();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    static const std::regex kFloat(R"([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)");
    std::string str(s);
    if (!std::regex_match(str, kFloat)) return std::nullopt;
    return std::strtod(str.c_str(), nullptr);
  }

  Status ParseLine() {
    if (line_.empty()) return Error("blank line");
    if (line_[0] == '#') return ParseComment();
    return ParseSample();
  }

  // Makes `name` the current family; a family may not reappear once another one started.
  Status OpenFamily(const std::string& name) {
    if (current_ && current_->name == name) return Status::Ok();
    CHORUS_RETURN_IF_ERROR(CloseFamily());
    if (!seen_.insert(name).second) return Error("family " + name + " appears twice");
    families_.push_back(ParsedFamily{name, "", std::nullopt, {}});
    current_ = &families_.back();
    return Status::Ok();
  }

  Status ParseComment() {
    const bool help = line_.starts_with("# HELP ");
    const bool type = line_.starts_with("# TYPE ");
    if (!help && !type) return Status::Ok();  // a plain comment
    rest_ = line_.substr(7);
    const std::string name = TakeName(false);
    if (name.empty()) return Error("bad metric name");
    CHORUS_RETURN_IF_ERROR(OpenFamily(name));
    if (!current_->samples.empty()) return Error("HELP/TYPE after samples");
    if (help) {
      if (current_->help) return Error("second HELP");
      std::string text;
      if (!rest_.empty()) {
        if (rest_[0] != ' ') return Error("no space after HELP name");
        rest_.remove_prefix(1);
        for (size_t i = 0; i < rest_.size(); ++i) {
          if (rest_[i] != '\\') {
            text += rest_[i];
            continue;
          }
          if (++i == rest_.size()) return Error("dangling backslash in HELP");
          if (rest_[i] == '\\') {
            text += '\\';
          } else if (rest_[i] == 'n') {
            text += '\n';
          } else {
            return Error("bad escape in HELP");
          }
        }
      }
      current_->help = text;
      return Status::Ok();
    }
    if (!current_->type.empty()) return Error("second TYPE");
    if (rest_.empty() || rest_[0] != ' ') return Error("no space after TYPE name");
    const std::string_view t = rest_.substr(1);
    if (t != "counter" && t != "gauge" && t != "histogram" && t != "summary" && t != "untyped") {
      return Error("unknown type");
    }
    current_->type = std::string(t);
    return Status::Ok();
  }

  Status ParseSample() {
    rest_ = line_;
    Sample s;
    s.name = TakeName(false);
    if (s.name.empty()) return Error("bad metric name");
    if (!rest_.empty() && rest_[0] == '{') {
      rest_.remove_prefix(1);
      while (true) {
        if (!rest_.empty() && rest_[0] == '}') break;
        const std::string label = TakeName(true);
        if (label.empty()) return Error("bad label name");
        if (label.starts_with("__")) return Error("reserved label name");
        if (!rest_.starts_with("=\"")) return Error("expected =\" after label name");
        rest_.remove_prefix(2);
        std::string value;
        bool closed = false;
        while (!rest_.empty()) {
          const char c = rest_[0];
          rest_.remove_prefix(1);
          if (c == '"') {
            closed = true;
            break;
          }
          if (c != '\\') {
            value += c;
            continue;
          }
          if (rest_.empty()) return Error("dangling backslash in label value");
          const char e = rest_[0];
          rest_.remove_prefix(1);
          if (e == '\\') {
            value += '\\';
          } else if (e == '"') {
            value += '"';
          } else if (e == 'n') {
            value += '\n';
          } else {
            return Error("bad escape in label value");
          }
        }
        if (!closed) return Error("unterminated label value");
        if (!s.labels.emplace(label, value).second) return Error("duplicate label " + label);
        if (!rest_.empty() && rest_[0] == ',') {
          rest_.remove_prefix(1);
          continue;
        }
        if (rest_.empty() || rest_[0] != '}') return Error("expected , or } after label value");
      }
      rest_.remove_prefix(1);  // '}'
    }
    if (rest_.empty() || (rest_[0] != ' ' && rest_[0] != '\t')) return Error("no blank before value");
    while (!rest_.empty() && (rest_[0] == ' ' || rest_[0] == '\t')) rest_.remove_prefix(1);
    const size_t value_end = std::min(rest_.find_first_of(" \t"), rest_.size());
    const auto value = ParseValue(rest_.substr(0, value_end));
    if (!value) return Error("bad sample value");
    s.value = *value;
    rest_.remove_prefix(value_end);
    if (!rest_.empty()) {
      while (!rest_.empty() && (rest_[0] == ' ' || rest_[0] == '\t')) rest_.remove_prefix(1);
      static const std::regex kTimestamp(R"(-?\d+)");
      if (!std::regex_match(std::string(rest_), kTimestamp)) return Error("bad timestamp");
    }

    if (!current_ || current_->type.empty()) return Error("sample without a TYPE line before it");
    const std::string& fam = current_->name;
    const std::string& type = current_->type;
    bool belongs = s.name == fam;
    if (type == "histogram") {
      belongs = s.name == fam + "_bucket" || s.name == fam + "_sum" || s.name == fam + "_count";
    } else if (type == "summary") {
      belongs = belongs || s.name == fam + "_sum" || s.name == fam + "_count";
    }
    if (!belongs) return Error("sample " + s.name + " is not part of family " + fam);
    if (type == "counter" && !(s.value >= 0)) return Error("counter value is negative or NaN");
    std::string key = s.name;
    for (const auto& [k, v] : s.labels) key += "\x1f" + k + "=" + v;
    if (!series_.insert(key).second) return Error("duplicate series");
    if (type == "histogram") CHORUS_RETURN_IF_ERROR(CheckHistogramSample(s));
    current_->samples.push_back(std::move(s));
    return Status::Ok();
  }

  struct HistogramSeries {
    std::vector<std::pair<double, double>> buckets;  // (le, cumulative count) in text order
    std::optional<double> sum;
    std::optional<double> count;
  };

  Status CheckHistogramSample(const Sample& s) {
    std::map<std::string, std::string> base = s.labels;
    HistogramSeries* h;
    if (s.name.ends_with("_bucket")) {
      auto le = base.find("le");
      if (le == base.end()) return Error("bucket without le");
      const auto bound = ParseValue(le->second);
      if (!bound || std::isnan(*bound)) return Error("bad le");
      base.erase(le);
      h = &histograms_[base];
      if (h->sum || h->count) return Error("bucket after _sum/_count");
      if (!h->buckets.empty()) {
        if (!(h->buckets.back().first < *bound)) return Error("le not increasing");
        if (s.value < h->buckets.back().second) return Error("buckets not cumulative");
      }
      h->buckets.emplace_back(*bound, s.value);
      return Status::Ok();
    }
    if (base.count("le")) return Error("le on _sum/_count");
    h = &histograms_[base];
    std::optional<double>& slot = s.name.ends_with("_sum") ? h->sum : h->count;
    if (slot) return Error("repeated _sum/_count");
    slot = s.value;
    return Status::Ok();
  }

  Status CloseFamily() {
    for (const auto& [labels, h] : histograms_) {
      if (h.buckets.empty() || !std::isinf(h.buckets.back().first)) {
        return Error("histogram " + current_->name + " does not end with le=\"+Inf\"");
      }
      if (!h.sum || !h.count) return Error("histogram " + current_->name + " lacks _sum or _count");
      if (h.buckets.back().second != *h.count) return Error("+Inf bucket differs from _count");
    }
    histograms_.clear();
    current_ = nullptr;
    return Status::Ok();
  }

  std::string_view line_;
  std::string_view rest_;
  size_t line_no_ = 0;
  std::vector<ParsedFamily> families_;  // reserved below so current_ stays valid
  ParsedFamily* current_ = nullptr;
  std::set<std::string> seen_;
  std::set<std::string> series_;
  std::map<std::map<std::string, std::string>, HistogramSeries> histograms_;

 public:
  ExpositionParser() { families_.reserve(1024); }
};

Result<std::vector<ParsedFamily>> ParseExposition(std::string_view text) {
  return ExpositionParser().Parse(text);
}

std::optional<double> FindSample(const std::vector<ParsedFamily>& families, const std::string& name,
                                 const std::map<std::string, std::string>& labels) {
  for (const auto& f : families) {
    for (const auto& s : f.samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
  }
  return std::nullopt;
}

TEST(ExpositionParserTest, AcceptsValidInput) {
  const std::string ok =
      "# a free comment\n"
      "# HELP a Help with \\\\ and \\n.\n"
      "# TYPE a counter\n"
      "a{x=\"1\",y=\"q\\\"\\n\\\\\",} 3 1700000000000\n"
      "a 1e3\n"
      "# TYPE h histogram\n"
      "h_bucket{le=\"0.5\"} 1\n"
      "h_bucket{le=\"+Inf\"} 2\n"
      "h_sum 0.75\n"
      "h_count 2\n"
      "# TYPE g gauge\n"
      "g -Inf\n"
      "g{a=\"b\"} NaN\n";
  auto parsed = ParseExposition(ok);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), 3u);
  EXPECT_EQ((*parsed)[0].help, "Help with \\ and \n.");
  EXPECT_EQ(FindSample(*parsed, "a", {{"x", "1"}, {"y", "q\"\n\\"}}), 3);
  EXPECT_EQ(FindSample(*parsed, "a", {}), 1000);
  EXPECT_TRUE(ParseExposition("").ok());
}

TEST(ExpositionParserTest, RejectsMalformedInput) {
  const char* kBroken[] = {
      "# TYPE a counter\na 1",                                                // no final newline
      "a 1\n",                                                                // no TYPE
      "# HELP a x\na 1\n",                                                    // HELP but no TYPE
      "# TYPE a counter\na{b=\"x} 1\n",                                       // unterminated value
      "# TYPE a counter\na{b=\"\\t\"} 1\n",                                   // bad escape
      "# TYPE a counter\na{b=\"x\"\"} 1\n",                                   // raw quote
      "# TYPE a counter\na{b=x} 1\n",                                         // unquoted value
      "# TYPE a counter\na{b=\"1\" c=\"2\"} 1\n",                             // missing comma
      "# TYPE a counter\na{__b=\"1\"} 1\n",                                   // reserved label
      "# TYPE a counter\na{b=\"1\",b=\"2\"} 1\n",                             // duplicate label
      "# TYPE a counter\na one\n",                                            // bad value
      "# TYPE a counter\na\n",                                                // no value
      "# TYPE a counter\na 1 abc\n",                                          // bad timestamp
      "# TYPE a counter\na 1 2 3\n",                                          // trailing junk
      "# TYPE a counter\na -1\n",                                             // negative counter
      "# TYPE a widget\na 1\n",                                               // unknown type
      "# TYPE a counter\n# TYPE a counter\na 1\n",                            // second TYPE
      "# TYPE a counter\na 1\n# HELP a late\n",                               // HELP after samples
      "# HELP a bad \\t escape\n# TYPE a counter\na 1\n",                     // bad HELP escape
      "# TYPE a counter\n\na 1\n",                                            // blank line
      "# TYPE 1a counter\n1a 1\n",                                            // bad metric name
      "# TYPE a counter\nb 1\n",                                              // sample of another family
      "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\n# TYPE a counter\na 2\n",  // family twice
      "# TYPE a counter\na 1\na 2\n",                                         // duplicate series
      "# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 3\nh_sum 1\nh_count 3\n",
      "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
      "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",  // no +Inf
      "# TYPE h histogram\nh_bucket 1\nh_sum 1\nh_count 1\n",            // no le
      "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
      "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",             // le order
      "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",  // no _sum
      "# TYPE h histogram\nh 1\n",                                 // bare name
  };
  for (const char* text : kBroken) {
    EXPECT_FALSE(ParseExposition(text).ok()) << "accepted:\n" << text;
  }
}

// ---- The registry ---------------------------------------------------------------------------

TEST(MetricsTest, CounterRendersExactly) {
  MetricsRegistry registry;
  auto family = registry.Counter("chorus_test_total", "A test counter.");
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  Counter& c = family->Get();
  c.Inc();
  c.Inc(41);
  EXPECT_EQ(c.Value(), 42u);
  EXPECT_EQ(registry.Render(),
            "# HELP chorus_test_total A test counter.\n"
            "# TYPE chorus_test_total counter\n"
            "chorus_test_total 42\n");
}

TEST(MetricsTest, UnlabelledMetricIsExportedFromRegistration) {
  MetricsRegistry registry;
  ASSERT_TRUE(registry.Counter("zero_total", "").ok());
  EXPECT_EQ(registry.Render(), "# TYPE zero_total counter\nzero_total 0\n");  // empty HELP omitted
}

TEST(MetricsTest, GaugeSetAddSub) {
  MetricsRegistry registry;
  auto family = registry.Gauge("chorus_queue_depth", "Queued items.", {"queue"});
  ASSERT_TRUE(family.ok());
  Gauge& g = family->WithLabels({"jobs"});
  g.Set(5);
  g.Add(3);
  g.Sub(10);
  g.Add();
  EXPECT_EQ(g.Value(), -1);
  family->WithLabels({"big"}).Set(std::numeric_limits<int64_t>::min());
  EXPECT_EQ(registry.Render(),
            "# HELP chorus_queue_depth Queued items.\n"
            "# TYPE chorus_queue_depth gauge\n"
            "chorus_queue_depth{queue=\"big\"} -9223372036854775808\n"
            "chorus_queue_depth{queue=\"jobs\"} -1\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndLeInclusive) {
  MetricsRegistry registry;
  auto family = registry.Histogram("chorus_latency_seconds", "Latency.", {0.25, 1, 10}, {"route"});
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  Histogram& h = family->WithLabels({"/a"});
  for (double v : {0.125, 0.25, 0.5, 10.0, 12.0}) h.Observe(v);  // exact in binary
  const Histogram::Snapshot snap = h.Collect();
  EXPECT_EQ(snap.cumulative, (std::vector<uint64_t>{2, 3, 4, 5}));
  EXPECT_EQ(snap.count, 5u);
  EXPECT_EQ(snap.sum, 22.875);
  EXPECT_EQ(registry.Render(),
            "# HELP chorus_latency_seconds Latency.\n"
            "# TYPE chorus_latency_seconds histogram\n"
            "chorus_latency_seconds_bucket{route=\"/a\",le=\"0.25\"} 2\n"
            "chorus_latency_seconds_bucket{route=\"/a\",le=\"1\"} 3\n"
            "chorus_latency_seconds_bucket{route=\"/a\",le=\"10\"} 4\n"
            "chorus_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5\n"
            "chorus_latency_seconds_sum{route=\"/a\"} 22.875\n"
            "chorus_latency_seconds_count{route=\"/a\"} 5\n");
}

TEST(MetricsTest, HistogramEdgeValues) {
  MetricsRegistry registry;
  // A trailing +Inf bound is accepted and not rendered twice.
  auto family = registry.Histogram("h", "", {1, std::numeric_limits<double>::infinity()});
  ASSERT_TRUE(family.ok()) << family.status().ToString();
  Histogram& h = family->Get();
  h.Observe(-5);  // below every bound: first bucket
  h.Observe(std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(registry.Render(),
            "# TYPE h histogram\n"
            "h_bucket{le=\"1\"} 1\n"
            "h_bucket{le=\"+Inf\"} 2\n"
            "h_sum NaN\n"
            "h_count 2\n");

  auto no_bounds = registry.Histogram("only_inf", "", {});
  ASSERT_TRUE(no_bounds.ok());
  no_bounds->Get().Observe(3);
  EXPECT_NE(registry.Render().find("only_inf_bucket{le=\"+Inf\"} 1\nonly_inf_sum 3\nonly_inf_count 1\n"),
            std::string::npos);
}

TEST(MetricsTest, ManyBucketsSpanSeveralCacheLines) {
  MetricsRegistry registry;
  auto family = registry.Histogram("wide", "", LinearBuckets(1, 1, 40));
  ASSERT_TRUE(family.ok());
  Histogram& h = family->Get();
  for (int v = 1; v <= 41; ++v) h.Observe(v);
  const auto snap = h.Collect();
  ASSERT_EQ(snap.cumulative.size(), 41u);
  for (size_t i = 0; i < snap.cumulative.size(); ++i) EXPECT_EQ(snap.cumulative[i], i + 1);
  EXPECT_EQ(snap.sum, 41 * 42 / 2);
}

TEST(MetricsTest, BucketHelpers) {
  EXPECT_EQ(ExponentialBuckets(0.25, 2, 4), (std::vector<double>{0.25, 0.5, 1, 2}));
  EXPECT_EQ(LinearBuckets(5, 5, 3), (std::vector<double>{5, 10, 15}));
}

TEST(MetricsTest, WithLabelsReturnsStableChildren) {
  MetricsRegistry registry;
  auto family = registry.Counter("chorus_http_requests_total", "HTTP requests served", {"route", "code"});
  ASSERT_TRUE(family.ok());
  Counter& a = family->WithLabels({"/healthz", "200"});
  Counter& b = family->WithLabels({"/healthz", "500"});
  EXPECT_NE(&a, &b);
  for (int i = 0; i < 100; ++i) family->WithLabels({"/x", std::to_string(i)});  // grow the map
  EXPECT_EQ(&a, &family->WithLabels({"/healthz", "200"}));
  const std::vector<std::string> owned = {"/healthz", "200"};
  EXPECT_EQ(&a, &family->WithLabels(owned));
  const std::vector<std::string_view> views = {"/healthz", "200"};
  EXPECT_EQ(&a, &family->WithLabels(views));
  // The same definition registered again is the same family.
  auto again = registry.Counter("chorus_http_requests_total", "HTTP requests served", {"route", "code"});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(&a, &again->WithLabels({"/healthz", "200"}));
  EXPECT_EQ(again->name(), "chorus_http_requests_total");
}

TEST(MetricsTest, FamiliesAndChildrenAreSorted) {
  MetricsRegistry registry;
  auto zeta = registry.Gauge("zeta", "z");
  auto alpha = registry.Counter("alpha_total", "a", {"k", "v"});
  auto mid = registry.Gauge("mid", "m");
  ASSERT_TRUE(zeta.ok() && alpha.ok() && mid.ok());
  alpha->WithLabels({"b", "1"}).Inc(1);
  alpha->WithLabels({"a", "2"}).Inc(2);
  alpha->WithLabels({"a", "10"}).Inc(3);
  alpha->WithLabels({"c", "0"}).Inc(4);
  EXPECT_EQ(registry.Render(),
            "# HELP alpha_total a\n# TYPE alpha_total counter\n"
            "alpha_total{k=\"a\",v=\"10\"} 3\n"
            "alpha_total{k=\"a\",v=\"2\"} 2\n"
            "alpha_total{k=\"b\",v=\"1\"} 1\n"
            "alpha_total{k=\"c\",v=\"0\"} 4\n"
            "# HELP mid m\n# TYPE mid gauge\nmid 0\n"
            "# HELP zeta z\n# TYPE zeta gauge\nzeta 0\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  MetricsRegistry registry;
  auto family = registry.Counter("esc_total", "Help with \\ backslash,\nnewline and \"quotes\".", {"v"});
  ASSERT_TRUE(family.ok());
  family->WithLabels({"a\\b\"c\nd"}).Inc();
  family->WithLabels({"bad\xff utf8 \xc3\xa9"}).Inc();
  const std::string text = registry.Render();
  EXPECT_EQ(text,
            "# HELP esc_total Help with \\\\ backslash,\\nnewline and \"quotes\".\n"
            "# TYPE esc_total counter\n"
            "esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
            "esc_total{v=\"bad\xEF\xBF\xBD utf8 \xc3\xa9\"} 1\n");
  auto parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ((*parsed)[0].help, "Help with \\ backslash,\nnewline and \"quotes\".");
  EXPECT_EQ(FindSample(*parsed, "esc_total", {{"v", "a\\b\"c\nd"}}), 1);
}

TEST(MetricsTest, NumbersFormattedForPrometheus) {
  MetricsRegistry registry;
  auto big = registry.Counter("big_total", "");
  ASSERT_TRUE(big.ok());
  big->Get().Inc(uint64_t{1} << 63);
  big->Get().Inc(5);
  std::vector<CallbackHandle> handles;
  const std::pair<const char*, double> kValues[] = {
      {"int", 3},
      {"large_int", 123456789012},
      {"frac", 1.5},
      {"tenth", 0.1},
      {"huge", 1e20},
      {"tiny", 1e-7},
      {"nan", std::numeric_limits<double>::quiet_NaN()},
      {"inf", std::numeric_limits<double>::infinity()},
      {"ninf", -std::numeric_limits<double>::infinity()},
      {"neg", -2},
  };
  for (const auto& [label, value] : kValues) {
    auto h = registry.GaugeCallback("values", "", {{"v", label}}, [value = value] { return value; });
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    handles.push_back(std::move(h).value());
  }
  const std::string text = registry.Render();
  EXPECT_NE(text.find("big_total 9223372036854775813\n"), std::string::npos) << text;
  for (const char* line :
       {"values{v=\"int\"} 3\n", "values{v=\"large_int\"} 123456789012\n", "values{v=\"frac\"} 1.5\n",
        "values{v=\"tenth\"} 0.1\n", "values{v=\"huge\"} 1e+20\n", "values{v=\"tiny\"} 1e-07\n",
        "values{v=\"nan\"} NaN\n", "values{v=\"inf\"} +Inf\n", "values{v=\"ninf\"} -Inf\n",
        "values{v=\"neg\"} -2\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << " not in\n" << text;
  }
  auto parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(FindSample(*parsed, "values", {{"v", "huge"}}), 1e20);
  EXPECT_EQ(FindSample(*parsed, "values", {{"v", "tiny"}}), 1e-7);
}

TEST(MetricsTest, ConcurrentUpdatesSumExactly) {
  MetricsRegistry registry;
  auto counters = registry.Counter("conc_total", "", {"k"});
  auto hist = registry.Histogram("conc_seconds", "", {0.5, 2});
  auto gauge = registry.Gauge("conc_gauge", "");
  ASSERT_TRUE(counters.ok() && hist.ok() && gauge.ok());
  constexpr int kThreads = 4;
  constexpr int kIters = 200000;
  std::vector<Counter*> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& c = counters->WithLabels({"shared"});  // concurrent creation of one child
      seen[t] = &c;
      Histogram& h = hist->Get();
      Gauge& g = gauge->Get();
      for (int i = 0; i < kIters; ++i) {
        c.Inc();
        h.Observe(1.0);
        g.Add(2);
        g.Sub(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]);
  EXPECT_EQ(seen[0]->Value(), uint64_t{kThreads} * kIters);
  const auto snap = hist->Get().Collect();
  EXPECT_EQ(snap.count, uint64_t{kThreads} * kIters);
  EXPECT_EQ(snap.cumulative, (std::vector<uint64_t>{0, snap.count, snap.count}));
  EXPECT_EQ(snap.sum, double{kThreads} * kIters);
  EXPECT_EQ(gauge->Get().Value(), int64_t{kThreads} * kIters);
  const std::string text = registry.Render();
  EXPECT_NE(text.find("conc_total{k=\"shared\"} 800000\n"), std::string::npos) << text;
}

TEST(MetricsTest, RenderWhileUpdatingStaysParseable) {
  MetricsRegistry registry;
  auto hist = registry.Histogram("live_seconds", "", ExponentialBuckets(0.001, 2, 12), {"shard"});
  ASSERT_TRUE(hist.ok());
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    Histogram& h = hist->WithLabels({"0"});
    for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) h.Observe(double(i % 5000) / 1000);
  });
  for (int i = 0; i < 200; ++i) {
    auto parsed = ParseExposition(registry.Render());
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  }
  stop = true;
  writer.join();
}

TEST(MetricsTest, ThreadsGetDistinctStripes) {
  size_t a = 0, b = 0;
  std::thread([&] { a = metrics_internal::ThisThreadStripe(); }).join();
  std::thread([&] { b = metrics_internal::ThisThreadStripe(); }).join();
  EXPECT_LT(a, kMetricStripes);
  EXPECT_LT(b, kMetricStripes);
  EXPECT_NE(a, b);  // round-robin: consecutive new threads never share
  EXPECT_EQ(metrics_internal::ThisThreadStripe(), metrics_internal::ThisThreadStripe());
}

TEST(MetricsTest, DuplicateRegistrationRules) {
  MetricsRegistry registry;
  auto c = registry.Counter("dup_total", "help", {"a"});
  ASSERT_TRUE(c.ok());
  auto same = registry.Counter("dup_total", "help", {"a"});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(&c->WithLabels({"x"}), &same->WithLabels({"x"}));

  EXPECT_EQ(registry.Gauge("dup_total", "help", {"a"}).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Counter("dup_total", "other help", {"a"}).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Counter("dup_total", "help", {"b"}).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Counter("dup_total", "help").status().code(), StatusCode::kAlreadyExists);
  auto cb = registry.GaugeCallback("dup_total", "help", {{"a", "1"}}, [] { return 1.0; });
  EXPECT_EQ(cb.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(registry.Counter("dup_total", "other help", {"a"}).status().message().find("dup_total"),
            std::string::npos);

  ASSERT_TRUE(registry.Histogram("lat", "h", {1, 2}).ok());
  ASSERT_TRUE(registry.Histogram("lat", "h", {1, 2}).ok());
  EXPECT_EQ(registry.Histogram("lat", "h", {1, 3}).status().code(), StatusCode::kAlreadyExists);
  // Series names of a histogram collide with other families, both ways round.
  EXPECT_EQ(registry.Counter("lat_count", "").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Gauge("lat_bucket", "").status().code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.Gauge("x_sum", "").ok());
  EXPECT_EQ(registry.Histogram("x", "", {1}).status().code(), StatusCode::kAlreadyExists);
  // The failed registrations left nothing behind.
  auto parsed = ParseExposition(registry.Render());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  std::vector<std::string> names;
  for (const auto& f : *parsed) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"dup_total", "lat", "x_sum"}));
}

TEST(MetricsTest, InvalidNamesRejected) {
  MetricsRegistry registry;
  for (const char* bad : {"", "1abc", "a-b", "a b", "caf\xc3\xa9", "a{b}", "a\"b"}) {
    auto r = registry.Counter(bad, "");
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  for (const char* good : {"a", "_a", ":a", "a:b_c9", "chorus_http_requests_total"}) {
    EXPECT_TRUE(IsValidMetricName(good)) << good;
  }
  for (const char* bad : {"", "1a", "a:b", "__reserved", "a-b", "a b"}) {
    EXPECT_FALSE(IsValidLabelName(bad)) << bad;
    EXPECT_EQ(registry.Gauge("g", "", {bad}).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(IsValidLabelName("_a"));
  EXPECT_TRUE(IsValidLabelName("route"));
  EXPECT_EQ(registry.Gauge("g", "", {"a", "a"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Histogram("h", "", {1}, {"le"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Histogram("h", "", {1, 1}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Histogram("h", "", {2, 1}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Histogram("h", "", {std::numeric_limits<double>::quiet_NaN()}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.Histogram("h", "", {-std::numeric_limits<double>::infinity(), 1}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.GaugeCallback("cb", "", {{"__x", "1"}}, [] { return 0.0; }).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.GaugeCallback("cb", "", nullptr).status().code(), StatusCode::kInvalidArgument);
  // The name is in the message, so a config author can find it.
  EXPECT_NE(registry.Counter("1abc", "").status().message().find("1abc"), std::string::npos);
  EXPECT_EQ(registry.Render(), "");
}

TEST(MetricsTest, WrongLabelCountIsDroppedNotFatal) {
  MetricsRegistry registry;
  auto family = registry.Counter("req_total", "", {"route", "code"});
  ASSERT_TRUE(family.ok());
  Counter& dropped = family->WithLabels({"/only-route"});
  dropped.Inc();
  EXPECT_EQ(&dropped, &family->WithLabels({"a", "b", "c"}));
  EXPECT_EQ(&dropped, &family->Get());
  family->Get().Inc();
  EXPECT_EQ(registry.Render(), "");  // the dropped child is never rendered
  family->WithLabels({"/ok", "200"}).Inc();
  EXPECT_EQ(registry.Render(), "# TYPE req_total counter\nreq_total{route=\"/ok\",code=\"200\"} 1\n");
  // An unlabelled family given values drops them too.
  auto plain = registry.Gauge("plain", "");
  ASSERT_TRUE(plain.ok());
  plain->WithLabels({"x"}).Set(7);
  EXPECT_EQ(plain->Get().Value(), 0);
}

TEST(MetricsTest, CallbacksEvaluatedAtRenderTime) {
  MetricsRegistry registry;
  std::atomic<int> open{3};
  auto handle = registry.GaugeCallback("chorus_open_connections", "Open connections.",
                                       [&] { return double(open.load()); });
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_EQ(registry.Render(),
            "# HELP chorus_open_connections Open connections.\n"
            "# TYPE chorus_open_connections gauge\n"
            "chorus_open_connections 3\n");
  open = 5;
  EXPECT_NE(registry.Render().find("chorus_open_connections 5\n"), std::string::npos);
  // A second unlabelled callback under the same name is a duplicate series.
  EXPECT_EQ(registry.GaugeCallback("chorus_open_connections", "Open connections.", [] { return 1.0; })
                .status()
                .code(),
            StatusCode::kAlreadyExists);
  handle->Reset();
  EXPECT_EQ(registry.Render(), "");
  // After removal the series may be registered again.
  auto again = registry.GaugeCallback("chorus_open_connections", "Open connections.", [] { return 1.0; });
  EXPECT_TRUE(again.ok());
}

TEST(MetricsTest, LabelledCallbacksShareAFamily) {
  MetricsRegistry registry;
  std::vector<CallbackHandle> handles;
  for (int shard : {1, 0}) {
    auto h =
        registry.CounterCallback("chorus_shard_tasks_total", "Tasks run.", {{"shard", std::to_string(shard)}},
                                 [shard] { return 10.0 * (shard + 1); });
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    handles.push_back(std::move(h).value());
  }
  EXPECT_EQ(
      registry.CounterCallback("chorus_shard_tasks_total", "Tasks run.", {{"shard", "0"}}, [] { return 0.0; })
          .status()
          .code(),
      StatusCode::kAlreadyExists);
  EXPECT_EQ(
      registry.CounterCallback("chorus_shard_tasks_total", "Tasks run.", {{"core", "0"}}, [] { return 0.0; })
          .status()
          .code(),
      StatusCode::kAlreadyExists);
  EXPECT_EQ(registry.Render(),
            "# HELP chorus_shard_tasks_total Tasks run.\n"
            "# TYPE chorus_shard_tasks_total counter\n"
            "chorus_shard_tasks_total{shard=\"0\"} 10\n"
            "chorus_shard_tasks_total{shard=\"1\"} 20\n");
  handles.erase(handles.begin());  // shard 1
  EXPECT_EQ(registry.Render(),
            "# HELP chorus_shard_tasks_total Tasks run.\n"
            "# TYPE chorus_shard_tasks_total counter\n"
            "chorus_shard_tasks_total{shard=\"0\"} 10\n");
  // Moving a handle keeps the registration; the moved-from handle owns nothing.
  CallbackHandle moved = std::move(handles[0]);
  handles.clear();
  EXPECT_NE(registry.Render().find("{shard=\"0\"} 10"), std::string::npos);
  moved = CallbackHandle();
  EXPECT_EQ(registry.Render(), "");
}

TEST(MetricsTest, CallbackHandleMayOutliveRegistry) {
  auto registry = std::make_unique<MetricsRegistry>();
  auto handle = registry->GaugeCallback("g", "", [] { return 1.0; });
  ASSERT_TRUE(handle.ok());
  registry.reset();
  handle->Reset();  // must not touch freed memory (the ASan build checks)
}

TEST(MetricsTest, WholeRenderParsesAsPrometheusText) {
  MetricsRegistry registry;
  auto requests =
      registry.Counter("chorus_http_requests_total", "HTTP requests served.\nBy route.", {"route", "code"});
  auto depth = registry.Gauge("chorus_queue_depth", "Queue depth \\ items.", {"queue"});
  auto latency = registry.Histogram("chorus_http_latency_seconds", "Latency.",
                                    ExponentialBuckets(0.0005, 2, 10), {"route"});
  auto plain = registry.Counter("chorus_plain_total", "Plain.");
  ASSERT_TRUE(requests.ok() && depth.ok() && latency.ok() && plain.ok());
  const std::string nasty = "q\"uo\\te\nnl,}{=";
  requests->WithLabels({"/healthz", "200"}).Inc(7);
  requests->WithLabels({nasty, "500"}).Inc();
  depth->WithLabels({"a"}).Set(-3);
  depth->WithLabels({nasty}).Set(9);
  for (int i = 0; i < 1000; ++i) latency->WithLabels({"/a"}).Observe(i * 0.0001);
  latency->WithLabels({"/b"}).Observe(100);
  plain->Get().Inc(2);
  auto cb = registry.GaugeCallback("chorus_temperature", "Callback.", {{"zone", nasty}},
                                   [] { return std::numeric_limits<double>::quiet_NaN(); });
  ASSERT_TRUE(cb.ok());

  const std::string text = registry.Render();
  auto parsed = ParseExposition(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString() << "\n" << text;
  std::vector<std::string> names;
  for (const auto& f : *parsed) names.push_back(f.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"chorus_http_latency_seconds", "chorus_http_requests_total",
                                      "chorus_plain_total", "chorus_queue_depth", "chorus_temperature"}));
  EXPECT_EQ((*parsed)[1].help, "HTTP requests served.\nBy route.");
  EXPECT_EQ((*parsed)[1].type, "counter");
  EXPECT_EQ((*parsed)[0].type, "histogram");
  EXPECT_EQ(FindSample(*parsed, "chorus_http_requests_total", {{"route", nasty}, {"code", "500"}}), 1);
  EXPECT_EQ(FindSample(*parsed, "chorus_queue_depth", {{"queue", nasty}}), 9);
  EXPECT_EQ(FindSample(*parsed, "chorus_http_latency_seconds_count", {{"route", "/a"}}), 1000);
  EXPECT_EQ(FindSample(*parsed, "chorus_http_latency_seconds_bucket", {{"route", "/b"}, {"le", "+Inf"}}), 1);
  EXPECT_EQ(FindSample(*parsed, "chorus_http_latency_seconds_bucket", {{"route", "/b"}, {"le", "0.256"}}), 0);
  const auto temp = FindSample(*parsed, "chorus_temperature", {{"zone", nasty}});
  ASSERT_TRUE(temp.has_value());
  EXPECT_TRUE(std::isnan(*temp));
}

TEST(MetricsTest, DefaultRegistryIsProcessWide) {
  EXPECT_EQ(&DefaultMetrics(), &DefaultMetrics());
  auto a = DefaultMetrics().Counter("chorus_metrics_test_default_total", "Test.");
  ASSERT_TRUE(a.ok());
  const uint64_t before = a->Get().Value();  // the registry outlives --gtest_repeat iterations
  a->Get().Inc();
  EXPECT_NE(DefaultMetrics().Render().find("chorus_metrics_test_default_total " + std::to_string(before + 1) +
                                           "\n"),
            std::string::npos);
}

}  // namespace
}  // namespace chorus
