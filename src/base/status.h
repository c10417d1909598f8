// Status and Result<T>: errors as values on every request path.
//
// A Status is either OK or carries a code and a human-readable message. Codes map onto
// HTTP statuses and gRPC codes at the edges (net/), so a service returns one Status and
// each transport renders it. Result<T> holds either a T or a non-OK Status.
//
// Both are [[nodiscard]]: ignoring an error is a compile-time warning (an error with -Werror).
// Neither throws; value() on an error Result is a programming bug and aborts.
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace chorus {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // bad input from the caller: 400
  kNotFound,           // 404
  kAlreadyExists,      // 409
  kPermissionDenied,   // authenticated but not allowed: 403
  kUnauthenticated,    // missing or invalid credentials: 401
  kResourceExhausted,  // rate limited or over a limit: 429
  kFailedPrecondition, // state does not allow the operation: 412
  kUnavailable,        // try again later, e.g. shutting down: 503
  kDeadlineExceeded,   // 504
  kInternal,           // a bug or an engine failure: 500
  kUnimplemented,      // 501
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "invalid_argument: message" or "ok".
  std::string ToString() const;

  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status PermissionDenied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status Unauthenticated(std::string m) { return {StatusCode::kUnauthenticated, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) std::abort();  // an OK Status carries no value: a bug
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }

  T& value() & { return Checked(); }
  const T& value() const& { return const_cast<Result*>(this)->Checked(); }
  T&& value() && { return std::move(Checked()); }

  T& operator*() & { return Checked(); }
  const T& operator*() const& { return const_cast<Result*>(this)->Checked(); }
  T* operator->() { return &Checked(); }
  const T* operator->() const { return &const_cast<Result*>(this)->Checked(); }

 private:
  T& Checked() {
    if (!ok()) std::abort();  // value() of an error: a programming bug
    return std::get<T>(v_);
  }
  std::variant<T, Status> v_;
};

}  // namespace chorus

// Propagates a non-OK Status from an expression returning Status.
#define CHORUS_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::chorus::Status chorus_status_ = (expr);   \
    if (!chorus_status_.ok()) return chorus_status_; \
  } while (0)

#define CHORUS_CONCAT_INNER(a, b) a##b
#define CHORUS_CONCAT(a, b) CHORUS_CONCAT_INNER(a, b)
// `CHORUS_ASSIGN_OR_RETURN(auto x, Foo());` declares x from a Result or returns its Status.
#define CHORUS_ASSIGN_OR_RETURN(lhs, expr)                                 \
  auto CHORUS_CONCAT(chorus_result_, __LINE__) = (expr);                   \
  if (!CHORUS_CONCAT(chorus_result_, __LINE__).ok())                       \
    return CHORUS_CONCAT(chorus_result_, __LINE__).status();               \
  lhs = std::move(CHORUS_CONCAT(chorus_result_, __LINE__)).value()
