// Process-wide settings every Chorus executable applies first thing in main() (chorus, and the
// chorus-bench apparatus so it takes less CPU from the processes it measures).
#pragma once

namespace chorus::net {

// glibc malloc: keep freed memory instead of returning it to the kernel after every burst, and
// serve allocations up to 32 MiB from the heap rather than from fresh mmaps (setting the trim
// threshold turns glibc's adaptive mmap threshold off, leaving it at 128 KiB, so every vector of a
// few thousand elements was an mmap, page faults and an munmap). Abseil's Mutex (under gRPC):
// lock-order (deadlock) tracking off. It is on in Debian's build and records a graph edge and a
// stack trace per lock acquisition on gRPC's hot paths.
void TuneProcess();

}  // namespace chorus::net
