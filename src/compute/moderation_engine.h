// The `moderation` engine: checks a text against a word list, seeing through the usual
// disguises (letter spacing, punctuation, case, full-width forms, invisible characters, and
// optionally look-alike digits and letters), with one Aho–Corasick pass over the normalised text.
//
// Model (--model PATH): a UTF-8 word list, one term per line; a line whose first non-blank
// character is '#' is a comment, blank lines are skipped, an optional category follows a tab:
//     scam
//     free money<TAB>spam
// A term may contain spaces ("free money"); it is normalised like the text, so it matches
// "FREE  money", "free-money" and "f r e e m o n e y" alike. If two terms normalise to the same
// letters, the first one wins. The shipped default list is models/moderation/words.txt.
//
// Normalisation, per code point of the text (and of every term):
//   - full-width ASCII U+FF01–U+FF5E becomes ASCII, the ideographic space U+3000 a space;
//   - invisible characters vanish without a trace: zero-width space/joiners, word joiner,
//     BOM, soft hyphen, bidi controls, combining marks U+0300–U+036F, variation selectors;
//   - case is folded (ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic) and Latin-1 accents are
//     dropped (é -> e, ñ -> n);
//   - separators — whitespace, ASCII and Unicode punctuation and symbols (general punctuation,
//     arrows, maths, box drawing, emoji) — are removed, remembering that a word boundary was
//     there; every other character is a letter.
//   - option lookalikes=true (default false) also maps 0->o 1->l 3->e 4->a 5->s 7->t @->a $->s,
//     and Cyrillic/Greek letters that look Latin (а е о р с х у ѕ і ј, ο α ε ι κ ν ρ τ υ χ) to
//     those Latin letters. Because 1 looks like both l and i, i and l (and 1) are one letter in
//     this mode, in the text and the terms alike.
// A match must start at a word start and end at a word end of the original text (separators or
// the text's ends around it), so "s.c.a.m" and "S C A M" match "scam" but "scampi", "this cam"
// and "Muscam" do not. Scripts written without spaces (CJK, kana, Thai, Lao, Khmer, Myanmar) have
// a boundary around every character.
//
// Payload: the text, UTF-8, at most max_bytes (option, default 1 MiB). An empty text is allowed.
// Answer: {"verdict":"block"|"allow","matches":[{"term":T,"category":C,"start":S,"end":E},...]}
//   verdict is "block" when anything matched; T is the term as written in the model file, C its
//   category ("" when none), [S, E) the byte range of the match in the payload; matches ordered by
//   start, at most 1000 (the verdict counts them all).
// Errors: "invalid_argument: text is not valid UTF-8 (byte N)", "invalid_argument: payload of N
//   bytes exceeds the M-byte limit". At load: kInvalidArgument for a missing --model, an empty
//   list, invalid UTF-8 or a term without letters; kNotFound for an unreadable file.
//
// Thread-safety: the engine is immutable once built; Handle() may run on any number of threads.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"
#include "compute/engine.h"

namespace chorus::compute {

inline constexpr std::size_t kDefaultModerationMaxBytes = std::size_t{1} << 20;
inline constexpr std::size_t kMaxModerationMatches = 1000;

Result<std::unique_ptr<Engine>> MakeModerationEngine(const EngineOptions& options);

}  // namespace chorus::compute
