#include "compute/moderation_engine.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "base/text.h"

namespace chorus::compute {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::size_t kMaxModelFileBytes = std::size_t{64} << 20;

// ---- Normalisation ----

enum class Kind : uint8_t { kIgnore, kSeparator, kLetter };

struct Folded {
  Kind kind;
  char32_t cp;
};

bool InRange(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

// Characters that are not there at all: no letter, no boundary ("sc\u200Bam" is "scam").
bool IsInvisible(char32_t c) {
  return c == 0x00AD || c == 0x034F || c == 0x061C || c == 0x180E || c == 0xFEFF ||
         InRange(c, 0x0300, 0x036F) || InRange(c, 0x200B, 0x200F) || InRange(c, 0x202A, 0x202E) ||
         InRange(c, 0x2060, 0x2064) || InRange(c, 0x2066, 0x206F) || InRange(c, 0xFE00, 0xFE0F) ||
         InRange(c, 0xE0100, 0xE01EF);
}

// Non-ASCII whitespace, punctuation and symbols (ASCII is handled in Fold).
bool IsUnicodeSeparator(char32_t c) {
  if (InRange(c, 0x0080, 0x00BF)) return c != 0x00AA && c != 0x00B5 && c != 0x00BA;  // ª µ º are letters
  return c == 0x00D7 || c == 0x00F7 || c == 0x1680 || InRange(c, 0x2000, 0x206F) ||
         InRange(c, 0x2190, 0x2BFF) || InRange(c, 0x2E00, 0x2E7F) || InRange(c, 0x3000, 0x3004) ||
         InRange(c, 0x3008, 0x301F) || c == 0x3030 || InRange(c, 0xFE10, 0xFE1F) ||
         InRange(c, 0xFE30, 0xFE6F) || InRange(c, 0xFF5F, 0xFF65) || InRange(c, 0x1F000, 0x1FAFF);
}

// Scripts written without spaces between words: every character is a word of its own.
bool IsUnspaced(char32_t c) {
  return InRange(c, 0x0E00, 0x0EFF) || InRange(c, 0x1000, 0x109F) || InRange(c, 0x1780, 0x17FF) ||
         InRange(c, 0x3040, 0x30FF) || InRange(c, 0x3400, 0x4DBF) || InRange(c, 0x4E00, 0x9FFF) ||
         InRange(c, 0xF900, 0xFAFF) || InRange(c, 0x20000, 0x2FFFF);
}

char32_t FoldCase(char32_t c) {
  if (InRange(c, 'A', 'Z')) return c + 0x20;
  if (c < 0x80) return c;
  if (InRange(c, 0x00C0, 0x00DE) && c != 0x00D7) return c + 0x20;
  if (c == 0x0178) return 0x00FF;  // Ÿ
  // Latin Extended-A: upper/lower pairs, upper case on even code points, then on odd ones.
  if ((InRange(c, 0x0100, 0x012F) || InRange(c, 0x0132, 0x0137) || InRange(c, 0x014A, 0x0177)) &&
      c % 2 == 0) {
    return c + 1;
  }
  if ((InRange(c, 0x0139, 0x0148) || InRange(c, 0x0179, 0x017E)) && c % 2 == 1) return c + 1;
  if (InRange(c, 0x0391, 0x03A9) && c != 0x03A2) return c + 0x20;  // Greek
  if (InRange(c, 0x0410, 0x042F)) return c + 0x20;                 // Cyrillic
  if (InRange(c, 0x0400, 0x040F)) return c + 0x50;
  return c;
}

// Latin-1 lower-case letters with accents to their base letter (æ ð ß þ have none).
char32_t DropAccent(char32_t c) {
  if (!InRange(c, 0x00E0, 0x00FF)) return c;
  static constexpr char kBase[] = "aaaaaa\0ceeeeiiii\0nooooo\0ouuuuy\0y";
  const char base = kBase[c - 0x00E0];
  return base != '\0' ? static_cast<char32_t>(base) : c;
}

char32_t LookAlike(char32_t c) {
  switch (c) {
    case '0':
      return 'o';
    case '1':
      return 'l';
    case '3':
      return 'e';
    case '4':
      return 'a';
    case '5':
      return 's';
    case '7':
      return 't';
    case '@':
      return 'a';
    case '$':
      return 's';
    case 'i':
      return 'l';  // 1 stands for both: i, l and 1 are one letter in this mode
    // Cyrillic
    case 0x0430:
      return 'a';
    case 0x0435:
      return 'e';
    case 0x043E:
      return 'o';
    case 0x0440:
      return 'p';
    case 0x0441:
      return 'c';
    case 0x0443:
      return 'y';
    case 0x0445:
      return 'x';
    case 0x0455:
      return 's';
    case 0x0456:
      return 'l';  // і, like i
    case 0x0458:
      return 'j';
    // Greek
    case 0x03B1:
      return 'a';
    case 0x03B5:
      return 'e';
    case 0x03B9:
      return 'l';  // ι, like i
    case 0x03BA:
      return 'k';
    case 0x03BD:
      return 'v';
    case 0x03BF:
      return 'o';
    case 0x03C1:
      return 'p';
    case 0x03C4:
      return 't';
    case 0x03C5:
      return 'u';
    case 0x03C7:
      return 'x';
    default:
      return c;
  }
}

Folded Fold(char32_t c, bool lookalikes) {
  if (InRange(c, 0xFF01, 0xFF5E)) c -= 0xFEE0;  // full-width ASCII
  if (c == 0x3000) c = ' ';                     // ideographic space
  if (IsInvisible(c)) return {Kind::kIgnore, c};
  c = DropAccent(FoldCase(c));
  if (lookalikes) c = LookAlike(c);
  if (c < 0x80) {
    const bool alnum = InRange(c, 'a', 'z') || InRange(c, '0', '9');
    return {alnum ? Kind::kLetter : Kind::kSeparator, c};
  }
  return {IsUnicodeSeparator(c) ? Kind::kSeparator : Kind::kLetter, c};
}

// The letters of a text, each with the byte range of the code point it came from and whether a
// separator (or the start of the text) comes right before it.
struct Normalised {
  std::u32string letters;
  std::vector<uint32_t> begin;
  std::vector<uint32_t> end;
  std::vector<bool> boundary_before;

  bool StartsWord(std::size_t i) const {
    return boundary_before[i] || IsUnspaced(letters[i]) || (i > 0 && IsUnspaced(letters[i - 1]));
  }
  bool EndsWord(std::size_t i) const {
    const std::size_t next = i + 1;
    return next == letters.size() || boundary_before[next] || IsUnspaced(letters[i]) ||
           IsUnspaced(letters[next]);
  }
};

char32_t DecodeAt(std::string_view s, std::size_t i, std::size_t n) {
  const auto b = [&s, i](std::size_t k) {
    return static_cast<char32_t>(static_cast<unsigned char>(s[i + k]));
  };
  switch (n) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

// kInvalidArgument naming the first bad byte.
Result<Normalised> Normalise(std::string_view text, bool lookalikes) {
  Normalised out;
  bool boundary = true;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = Utf8SequenceLength(text, i);
    if (n == 0) return InvalidArgument("text is not valid UTF-8 (byte " + std::to_string(i) + ")");
    const Folded f = Fold(DecodeAt(text, i, n), lookalikes);
    if (f.kind == Kind::kSeparator) {
      boundary = true;
    } else if (f.kind == Kind::kLetter) {
      out.letters.push_back(f.cp);
      out.begin.push_back(static_cast<uint32_t>(i));
      out.end.push_back(static_cast<uint32_t>(i + n));
      out.boundary_before.push_back(boundary);
      boundary = false;
    }
    i += n;
  }
  return out;
}

// ---- Aho–Corasick over code points ----

class Automaton {
 public:
  Automaton() : nodes_(1) {}

  // Adds `pattern` (non-empty) as `id`; false when an equal pattern is there already.
  bool Add(const std::u32string& pattern, int32_t id) {
    int32_t node = 0;
    for (const char32_t c : pattern) {
      int32_t next = Child(node, c);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[static_cast<std::size_t>(node)].next.emplace_back(c, next);
        std::sort(nodes_[static_cast<std::size_t>(node)].next.begin(),
                  nodes_[static_cast<std::size_t>(node)].next.end());
        nodes_.emplace_back();
      }
      node = next;
    }
    Node& last = nodes_[static_cast<std::size_t>(node)];
    if (last.output >= 0) return false;
    last.output = id;
    return true;
  }

  // Computes failure and dictionary links, breadth first. Call once, after every Add.
  void Build() {
    std::vector<int32_t> queue;
    for (const auto& [c, child] : nodes_[0].next) queue.push_back(child);
    for (std::size_t head = 0; head < queue.size(); ++head) {
      const int32_t u = queue[head];
      for (const auto& [c, v] : nodes_[static_cast<std::size_t>(u)].next) {
        int32_t f = nodes_[static_cast<std::size_t>(u)].fail;
        while (f != 0 && Child(f, c) < 0) f = nodes_[static_cast<std::size_t>(f)].fail;
        const int32_t target = Child(f, c);
        Node& node = nodes_[static_cast<std::size_t>(v)];
        node.fail = target >= 0 && target != v ? target : 0;
        const Node& fail = nodes_[static_cast<std::size_t>(node.fail)];
        node.dict = fail.output >= 0 ? node.fail : fail.dict;
        queue.push_back(v);
      }
    }
  }

  // Calls on_match(index of the last letter, id) for every occurrence of every pattern.
  template <typename F>
  void Scan(const std::u32string& text, F&& on_match) const {
    int32_t state = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const char32_t c = text[i];
      while (state != 0 && Child(state, c) < 0) state = nodes_[static_cast<std::size_t>(state)].fail;
      const int32_t next = Child(state, c);
      state = next >= 0 ? next : 0;
      const Node& here = nodes_[static_cast<std::size_t>(state)];
      for (int32_t t = here.output >= 0 ? state : here.dict; t > 0;
           t = nodes_[static_cast<std::size_t>(t)].dict) {
        on_match(i, nodes_[static_cast<std::size_t>(t)].output);
      }
    }
  }

 private:
  struct Node {
    std::vector<std::pair<char32_t, int32_t>> next;  // sorted by code point
    int32_t fail = 0;                                // longest proper suffix that is a prefix of some pattern
    int32_t output = -1;                             // the pattern ending here, or -1
    int32_t dict = -1;                               // nearest node on the fail chain with an output, or -1
  };

  int32_t Child(int32_t node, char32_t c) const {
    const auto& next = nodes_[static_cast<std::size_t>(node)].next;
    const auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    return it != next.end() && it->first == c ? it->second : -1;
  }

  std::vector<Node> nodes_;
};

// ---- The engine ----

struct Term {
  std::string text;      // as written in the model file
  std::string category;  // "" when none
  std::size_t letters;   // normalised length
};

std::string Trim(std::string_view s) {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; };
  while (!s.empty() && blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && blank(s.back())) s.remove_suffix(1);
  return std::string(s);
}

class ModerationEngine final : public Engine {
 public:
  static Result<std::unique_ptr<ModerationEngine>> Load(const std::string& path, bool lookalikes,
                                                        std::size_t max_bytes) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return NotFound("moderation model " + path + ": " + std::strerror(errno));
    std::string content;
    content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) return NotFound("moderation model " + path + ": read failed");
    if (content.size() > kMaxModelFileBytes) {
      return InvalidArgument("moderation model " + path + " is larger than " +
                             std::to_string(kMaxModelFileBytes) + " bytes");
    }
    if (content.compare(0, 3, "\xEF\xBB\xBF") == 0) content.erase(0, 3);  // a BOM

    auto engine = std::unique_ptr<ModerationEngine>(new ModerationEngine(lookalikes, max_bytes));
    std::istringstream lines(content);
    std::string line;
    for (int number = 1; std::getline(lines, line); ++number) {
      const std::string where = "moderation model " + path + " line " + std::to_string(number);
      if (!IsValidUtf8(line)) return InvalidArgument(where + " is not valid UTF-8");
      const std::string trimmed = Trim(line);
      if (trimmed.empty() || trimmed[0] == '#') continue;
      const std::size_t tab = trimmed.find('\t');
      Term term{Trim(std::string_view(trimmed).substr(0, tab)),
                tab == std::string::npos ? "" : Trim(std::string_view(trimmed).substr(tab + 1)), 0};
      auto normalised = Normalise(term.text, lookalikes);
      if (!normalised.ok() || normalised->letters.empty()) {
        return InvalidArgument(where + ": term \"" + term.text + "\" has no letters or digits");
      }
      term.letters = normalised->letters.size();
      if (engine->automaton_.Add(normalised->letters, static_cast<int32_t>(engine->terms_.size()))) {
        engine->terms_.push_back(std::move(term));
      }
    }
    if (engine->terms_.empty()) {
      return InvalidArgument(
          "moderation model " + path +
          " has no terms (one per line, optional category after a tab; # starts a comment)");
    }
    engine->automaton_.Build();
    return engine;
  }

  std::string_view name() const override { return "moderation"; }

  Result<std::string> Handle(std::string_view payload) override {
    if (payload.size() > max_bytes_) {
      return InvalidArgument("payload of " + std::to_string(payload.size()) + " bytes exceeds the " +
                             std::to_string(max_bytes_) + "-byte limit");
    }
    CHORUS_ASSIGN_OR_RETURN(const Normalised text, Normalise(payload, lookalikes_));
    struct Match {
      uint32_t start, end;
      int32_t term;
    };
    std::vector<Match> matches;
    automaton_.Scan(text.letters, [&](std::size_t last, int32_t id) {
      const std::size_t first = last + 1 - terms_[static_cast<std::size_t>(id)].letters;
      if (text.StartsWord(first) && text.EndsWord(last))
        matches.push_back({text.begin[first], text.end[last], id});
    });
    std::sort(matches.begin(), matches.end(), [](const Match& a, const Match& b) {
      return a.start != b.start ? a.start < b.start : a.end < b.end;
    });
    Json out = Json::object();
    out["verdict"] = matches.empty() ? "allow" : "block";
    Json list = Json::array();
    for (std::size_t i = 0; i < matches.size() && i < kMaxModerationMatches; ++i) {
      const Term& term = terms_[static_cast<std::size_t>(matches[i].term)];
      Json m = Json::object();
      m["term"] = term.text;
      m["category"] = term.category;
      m["start"] = matches[i].start;
      m["end"] = matches[i].end;
      list.push_back(std::move(m));
    }
    out["matches"] = std::move(list);
    return out.dump();  // every string in it is valid UTF-8 (checked at load and above)
  }

 private:
  ModerationEngine(bool lookalikes, std::size_t max_bytes) : lookalikes_(lookalikes), max_bytes_(max_bytes) {}

  const bool lookalikes_;
  const std::size_t max_bytes_;
  std::vector<Term> terms_;  // indexed by automaton pattern id
  Automaton automaton_;
};

}  // namespace

Result<std::unique_ptr<Engine>> MakeModerationEngine(const EngineOptions& options) {
  OptionReader reader("moderation", options);
  CHORUS_ASSIGN_OR_RETURN(const bool lookalikes, reader.Bool("lookalikes", false));
  CHORUS_ASSIGN_OR_RETURN(
      const int64_t max_bytes,
      reader.Int("max_bytes", static_cast<int64_t>(kDefaultModerationMaxBytes), 0, int64_t{64} << 20));
  CHORUS_RETURN_IF_ERROR(reader.CheckNoneUnknown());
  if (options.model.empty()) {
    return InvalidArgument("the moderation engine needs a model: the path of a word list (--model FILE)");
  }
  CHORUS_ASSIGN_OR_RETURN(
      auto engine, ModerationEngine::Load(options.model, lookalikes, static_cast<std::size_t>(max_bytes)));
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace chorus::compute
