// Clang thread-safety annotations: say which mutex guards which data, and which locks a function
// needs, takes or gives back, so that `clang++ -Wthread-safety` proves at compile time that guarded
// data is only touched with its lock held (scripts/check-thread-safety.sh runs that check in CI).
//
// Contract:
//   - The macros only describe; they generate no code. Under compilers without the attributes
//     (gcc, which builds every release) they expand to nothing, so they can never change what a
//     program does, only what clang accepts.
//   - The analysis is intraprocedural and trusts the annotations: a function annotated
//     REQUIRES(mu_) is checked assuming mu_ is held, and every caller is checked to hold it.
//     Constructors and destructors are not checked (nothing else can see the object yet/any more).
//   - Lambdas are analysed as separate functions that hold no lock. A lambda that touches guarded
//     data under a lock its caller holds (a condition variable predicate, say) needs its own
//     annotation: `[&]() REQUIRES(mu_) { return ready_; }`.
//   - NO_THREAD_SAFETY_ANALYSIS switches the check off for one function. It is a last resort: say
//     in a comment why the access is safe.
//
// Use chorus::Mutex / chorus::MutexLock (base/mutex.h) rather than std::mutex: libstdc++'s mutex
// types carry no annotations, so the analysis cannot see them being locked.
//
// Each macro is defined only if it is not defined yet. gRPC pulls in Abseil's backwards-compatible
// absl/base/internal/thread_annotations.h, which defines GUARDED_BY, PT_GUARDED_BY,
// ACQUIRED_BEFORE/AFTER and NO_THREAD_SAFETY_ANALYSIS unprefixed, to the same attributes. When it
// comes first, its definitions are used; when it comes second, it redefines them from a system
// header, which compilers do not warn about. Redefining them here would be a macro-redefinition
// warning, an error under -Werror, in every file that includes both.
//
//   class Queue {
//    public:
//     void Push(int v) EXCLUDES(mu_) {
//       MutexLock lock(mu_);
//       items_.push_back(v);
//     }
//    private:
//     void CompactLocked() REQUIRES(mu_);
//     Mutex mu_;
//     std::vector<int> items_ GUARDED_BY(mu_);
//   };
#pragma once

#if defined(__clang__)
#define CHORUS_THREAD_ANNOTATION_(x) __attribute__((x))
#else
#define CHORUS_THREAD_ANNOTATION_(x)
#endif

// ---- On types ----------------------------------------------------------------------------------

// The class is a lock (a "capability"); `x` names the kind in diagnostics, e.g. "mutex".
#ifndef CAPABILITY
#define CAPABILITY(x) CHORUS_THREAD_ANNOTATION_(capability(x))
#endif

// The class is an RAII holder: its constructor acquires and its destructor releases the
// capabilities named in the constructor's ACQUIRE.
#ifndef SCOPED_CAPABILITY
#define SCOPED_CAPABILITY CHORUS_THREAD_ANNOTATION_(scoped_lockable)
#endif

// ---- On data -----------------------------------------------------------------------------------

// The member (or global) may only be read or written with `x` held.
#ifndef GUARDED_BY
#define GUARDED_BY(x) CHORUS_THREAD_ANNOTATION_(guarded_by(x))
#endif

// The pointer itself is free to use, but what it points at is guarded by `x`.
#ifndef PT_GUARDED_BY
#define PT_GUARDED_BY(x) CHORUS_THREAD_ANNOTATION_(pt_guarded_by(x))
#endif

// Lock ordering between mutexes; only checked with -Wthread-safety-beta.
#ifndef ACQUIRED_BEFORE
#define ACQUIRED_BEFORE(...) CHORUS_THREAD_ANNOTATION_(acquired_before(__VA_ARGS__))
#endif
#ifndef ACQUIRED_AFTER
#define ACQUIRED_AFTER(...) CHORUS_THREAD_ANNOTATION_(acquired_after(__VA_ARGS__))
#endif

// ---- On functions ------------------------------------------------------------------------------

// The caller must hold the capabilities (exclusively / at least shared) on entry; still held on
// return.
#ifndef REQUIRES
#define REQUIRES(...) CHORUS_THREAD_ANNOTATION_(requires_capability(__VA_ARGS__))
#endif
#ifndef REQUIRES_SHARED
#define REQUIRES_SHARED(...) CHORUS_THREAD_ANNOTATION_(requires_shared_capability(__VA_ARGS__))
#endif

// The function acquires the capabilities (not held on entry, held on return). With no argument,
// on a member of a CAPABILITY class, the capability is `*this`.
#ifndef ACQUIRE
#define ACQUIRE(...) CHORUS_THREAD_ANNOTATION_(acquire_capability(__VA_ARGS__))
#endif
#ifndef ACQUIRE_SHARED
#define ACQUIRE_SHARED(...) CHORUS_THREAD_ANNOTATION_(acquire_shared_capability(__VA_ARGS__))
#endif

// The function releases the capabilities (held on entry, not held on return).
#ifndef RELEASE
#define RELEASE(...) CHORUS_THREAD_ANNOTATION_(release_capability(__VA_ARGS__))
#endif
#ifndef RELEASE_SHARED
#define RELEASE_SHARED(...) CHORUS_THREAD_ANNOTATION_(release_shared_capability(__VA_ARGS__))
#endif
#ifndef RELEASE_GENERIC
#define RELEASE_GENERIC(...) CHORUS_THREAD_ANNOTATION_(release_generic_capability(__VA_ARGS__))
#endif

// The function tries to acquire; the first argument is the return value meaning "acquired".
#ifndef TRY_ACQUIRE
#define TRY_ACQUIRE(...) CHORUS_THREAD_ANNOTATION_(try_acquire_capability(__VA_ARGS__))
#endif
#ifndef TRY_ACQUIRE_SHARED
#define TRY_ACQUIRE_SHARED(...) CHORUS_THREAD_ANNOTATION_(try_acquire_shared_capability(__VA_ARGS__))
#endif

// The caller must not hold the capabilities (the function takes them itself; calling it with
// them held would deadlock). A call with them visibly held is a warning; proving that callers
// do not hold them (-Wthread-safety-negative) is not enabled.
#ifndef EXCLUDES
#define EXCLUDES(...) CHORUS_THREAD_ANNOTATION_(locks_excluded(__VA_ARGS__))
#endif

// The function checks at run time (or, for a no-op, documents) that the capability is held; the
// analysis assumes it is held afterwards.
#ifndef ASSERT_CAPABILITY
#define ASSERT_CAPABILITY(x) CHORUS_THREAD_ANNOTATION_(assert_capability(x))
#endif
#ifndef ASSERT_SHARED_CAPABILITY
#define ASSERT_SHARED_CAPABILITY(x) CHORUS_THREAD_ANNOTATION_(assert_shared_capability(x))
#endif

// The function returns a reference to the capability `x` (an accessor for a private mutex).
#ifndef RETURN_CAPABILITY
#define RETURN_CAPABILITY(x) CHORUS_THREAD_ANNOTATION_(lock_returned(x))
#endif

// Turns the analysis off for this function. Comment why the unchecked accesses are safe.
#ifndef NO_THREAD_SAFETY_ANALYSIS
#define NO_THREAD_SAFETY_ANALYSIS CHORUS_THREAD_ANNOTATION_(no_thread_safety_analysis)
#endif
