// A seeded pseudo-random generator (xoshiro256**), injected wherever a component needs
// randomness (jitter, sampling, load-balancer tie-breaks) so tests are reproducible.
//
// Not thread-safe: give each shard its own Random, seeded from the configured seed and the shard
// index (Random::ForShard). Not for secrets: tokens use the OS CSPRNG (net/token.h).
#pragma once

#include <cstdint>

namespace chorus {

class Random {
 public:
  explicit Random(uint64_t seed);

  // A generator for one shard: same seed + shard index gives the same stream every run.
  static Random ForShard(uint64_t seed, uint32_t shard) { return Random(seed ^ (0x9E3779B97F4A7C15ULL * (shard + 1))); }

  uint64_t Next();
  // Uniform in [0, n); n must be > 0.
  uint64_t Uniform(uint64_t n);
  // Uniform in [0, 1).
  double NextDouble();
  // True with probability p.
  bool Bernoulli(double p) { return NextDouble() < p; }

  // UniformRandomBitGenerator, so <random> distributions and std::shuffle accept it.
  using result_type = uint64_t;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()() { return Next(); }

 private:
  uint64_t s_[4];
};

}  // namespace chorus
