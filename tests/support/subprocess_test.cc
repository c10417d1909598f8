#include "support/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chorus::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;
using ::testing::Not;

// Generous: only reached when something is broken; passing tests return as soon as they can.
constexpr milliseconds kLong = seconds(20);

std::unique_ptr<Subprocess> StartOrDie(std::vector<std::string> argv,
                                       Subprocess::Options options = {}) {
  auto p = Subprocess::Start(std::move(argv), std::move(options));
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  if (!p.ok()) return nullptr;
  return std::move(p).value();
}

// True once `pid` is gone entirely: not running and not a zombie either.
bool ProcessGone(pid_t pid) { return !std::filesystem::exists("/proc/" + std::to_string(pid)); }

bool EventuallyGone(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + kLong;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ProcessGone(pid)) return true;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return false;
}

TEST(SubprocessTest, ReportsExitCode) {
  auto p = StartOrDie({"sh", "-c", "exit 3"});
  ASSERT_NE(p, nullptr);
  auto code = p->Wait(kLong);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 3);
  EXPECT_FALSE(p->killed_by_signal());
  EXPECT_FALSE(p->running());
  // Asking again returns the same code without waiting.
  auto again = p->Wait(milliseconds(0));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 3);
}

TEST(SubprocessTest, WaitForLineReturnsTheLineWhileTheChildRuns) {
  auto p = StartOrDie({"sh", "-c", "echo starting; echo hello world; sleep 30"});
  ASSERT_NE(p, nullptr);
  auto line = p->WaitForLine("hello", kLong);
  ASSERT_TRUE(line.ok()) << line.status().ToString();
  EXPECT_EQ(*line, "hello world");
  EXPECT_TRUE(p->running());
  EXPECT_EQ(p->output(), "starting\nhello world\n");
}

TEST(SubprocessTest, LinesCanBeAwaitedInAnyOrder) {
  auto p = StartOrDie({"sh", "-c", "printf 'grpc listening 1\\r\\nhttp listening 2\\nlast'"});
  ASSERT_NE(p, nullptr);
  auto http = p->WaitForLine("http listening", kLong);
  auto grpc = p->WaitForLine("grpc listening", kLong);
  auto first = p->WaitForLine("listening", kLong);
  // An unterminated final line still counts once the output ends.
  auto last = p->WaitForLine([](std::string_view l) { return l == "last"; }, kLong);
  ASSERT_TRUE(http.ok()) << http.status().ToString();
  ASSERT_TRUE(grpc.ok()) << grpc.status().ToString();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE(last.ok()) << last.status().ToString();
  EXPECT_EQ(*http, "http listening 2");
  EXPECT_EQ(*grpc, "grpc listening 1");   // printed before the line awaited first
  EXPECT_EQ(*first, "grpc listening 1");  // "\r\n" endings are stripped too
  auto none = p->WaitForLine("absent", kLong);
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition);
}

TEST(SubprocessTest, WaitForLineTimesOutOnASilentProcess) {
  auto p = StartOrDie({"sleep", "30"});
  ASSERT_NE(p, nullptr);
  auto line = p->WaitForLine("never", milliseconds(100));
  ASSERT_FALSE(line.ok());
  EXPECT_EQ(line.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_THAT(line.status().message(), HasSubstr("never"));
  EXPECT_TRUE(p->running());
}

TEST(SubprocessTest, WaitForLineFailsWhenTheProcessExitsWithoutIt) {
  auto p = StartOrDie({"sh", "-c", "echo something else; exit 4"});
  ASSERT_NE(p, nullptr);
  auto line = p->WaitForLine("hello", kLong);
  ASSERT_FALSE(line.ok());
  EXPECT_EQ(line.status().code(), StatusCode::kFailedPrecondition);
  // The diagnostics carry what the process did print.
  EXPECT_THAT(line.status().message(), HasSubstr("something else"));
}

TEST(SubprocessTest, SignalDeathIsReportedDistinctly) {
  auto p = StartOrDie({"sleep", "30"});
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(p->Signal(SIGTERM).ok());
  auto code = p->Wait(kLong);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, Subprocess::kSignalExitBase + SIGTERM);
  EXPECT_TRUE(p->killed_by_signal());
  EXPECT_EQ(p->Signal(SIGTERM).code(), StatusCode::kFailedPrecondition);
}

TEST(SubprocessTest, WaitTimesOutAndLeavesTheChildRunning) {
  auto p = StartOrDie({"sleep", "30"});
  ASSERT_NE(p, nullptr);
  auto code = p->Wait(milliseconds(50));
  EXPECT_EQ(code.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(p->running());
}

TEST(SubprocessTest, ChildWritingALotDoesNotDeadlock) {
  // 10 MB through a 64 KiB pipe: only works if the output is drained while we wait for the exit.
  auto p = StartOrDie({"sh", "-c", "yes | head -c 10000000; echo; echo done"});
  ASSERT_NE(p, nullptr);
  auto code = p->Wait(seconds(60));
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 0);
  // Complete as soon as Wait() returns, up to the last byte.
  const std::string out = p->output();
  EXPECT_EQ(out.size(), 10000000u + 1 + 5);
  EXPECT_EQ(out.substr(0, 4), "y\ny\n");
  EXPECT_EQ(out.substr(out.size() - 8), "y\n\ndone\n");
  auto line = p->WaitForLine("done", kLong);
  ASSERT_TRUE(line.ok()) << line.status().ToString();
}

TEST(SubprocessTest, ChildWritingALotWhileTheTestDoesSomethingElse) {
  // Nobody calls into the Subprocess while the child writes; it must still finish.
  auto p = StartOrDie({"sh", "-c", "yes | head -c 2000000; echo finished"});
  ASSERT_NE(p, nullptr);
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  while (p->running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_FALSE(p->running());
  auto line = p->WaitForLine("finished", kLong);
  EXPECT_TRUE(line.ok()) << line.status().ToString();
}

TEST(SubprocessTest, MissingProgramIsAnErrorAtStart) {
  auto p = Subprocess::Start({"chorus-no-such-program-xyz"});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
}

TEST(SubprocessTest, BadWorkingDirectoryIsAnErrorAtStart) {
  Subprocess::Options options;
  options.working_dir = "/nonexistent/chorus/dir";
  auto p = Subprocess::Start({"true"}, options);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("/nonexistent/chorus/dir"));
}

TEST(SubprocessTest, PassesEnvironmentAndWorkingDirectory) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok());
  setenv("CHORUS_SUBPROCESS_TEST_OVERRIDE", "from-parent", 1);
  Subprocess::Options options;
  options.env = {{"CHORUS_SUBPROCESS_TEST_VAR", "value 1"},
                 {"CHORUS_SUBPROCESS_TEST_OVERRIDE", "from-options"}};
  options.working_dir = dir->path();
  auto p = StartOrDie(
      {"sh", "-c",
       "echo "
       "\"$CHORUS_SUBPROCESS_TEST_VAR|$CHORUS_SUBPROCESS_TEST_OVERRIDE|$(pwd)|${HOME:+home}\""},
      options);
  unsetenv("CHORUS_SUBPROCESS_TEST_OVERRIDE");
  ASSERT_NE(p, nullptr);
  auto line = p->WaitForLine("|", kLong);
  ASSERT_TRUE(line.ok()) << line.status().ToString();
  const std::string home = getenv("HOME") != nullptr ? "home" : "";
  EXPECT_EQ(*line, "value 1|from-options|" + dir->path() + "|" + home);
}

TEST(SubprocessTest, LogFileModeWritesTheFileAndStillFindsLines) {
  auto dir = TempDir::Create();
  ASSERT_TRUE(dir.ok());
  Subprocess::Options options;
  options.output = Subprocess::Options::Output::kLogFile;
  options.log_path = dir->path() + "/child.log";
  auto p = StartOrDie({"sh", "-c", "echo to stdout; echo to stderr >&2; sleep 30"}, options);
  ASSERT_NE(p, nullptr);
  auto line = p->WaitForLine("stderr", kLong);
  ASSERT_TRUE(line.ok()) << line.status().ToString();
  EXPECT_EQ(*line, "to stderr");
  std::ifstream file(options.log_path);
  std::stringstream content;
  content << file.rdbuf();
  EXPECT_EQ(content.str(), "to stdout\nto stderr\n");
  EXPECT_EQ(p->output(), "to stdout\nto stderr\n");
  EXPECT_EQ(p->OutputTail(1), "to stderr");
}

TEST(SubprocessTest, DescriptorsOfTheTestProcessDoNotLeakIntoTheChild) {
  const int leaked = open("/dev/null", O_RDONLY);  // deliberately without O_CLOEXEC
  ASSERT_GE(leaked, 0);
  auto p = StartOrDie({"sh", "-c", "ls /proc/$$/fd; echo end"});
  close(leaked);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(p->Wait(kLong).ok());
  ASSERT_TRUE(p->WaitForLine("end", kLong).ok());
  std::vector<std::string> fds;
  std::istringstream in(p->output());
  for (std::string fd; std::getline(in, fd) && fd != "end";) fds.push_back(fd);
  EXPECT_THAT(fds, ::testing::IsSupersetOf({"0", "1", "2"}));
  EXPECT_THAT(fds, Not(::testing::Contains(std::to_string(leaked))));
}

TEST(SubprocessTest, IgnoredSignalsInTheTestProcessAreResetInTheChild) {
  struct sigaction old_action;
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGUSR1, &ignore, &old_action), 0);
  auto p = StartOrDie({"sleep", "30"});
  sigaction(SIGUSR1, &old_action, nullptr);
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(p->Signal(SIGUSR1).ok());
  auto code = p->Wait(kLong);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, Subprocess::kSignalExitBase + SIGUSR1);
}

TEST(SubprocessTest, StopKillsAChildThatIgnoresSigterm) {
  auto p = StartOrDie({"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"});
  ASSERT_NE(p, nullptr);
  ASSERT_TRUE(p->WaitForLine("ready", kLong).ok());
  EXPECT_EQ(p->Stop(milliseconds(100)), Subprocess::kSignalExitBase + SIGKILL);
  EXPECT_FALSE(p->running());
}

TEST(SubprocessTest, DestructorLeavesNoGrandchildrenBehind) {
  pid_t grandchild = 0;
  pid_t child = 0;
  {
    auto p = StartOrDie({"sh", "-c", "sleep 300 & echo pid=$!; wait"});
    ASSERT_NE(p, nullptr);
    child = p->pid();
    auto line = p->WaitForLine("pid=", kLong);
    ASSERT_TRUE(line.ok()) << line.status().ToString();
    grandchild = std::stoi(line->substr(4));
    ASSERT_FALSE(ProcessGone(grandchild));
  }
  EXPECT_TRUE(EventuallyGone(grandchild));
  EXPECT_TRUE(ProcessGone(child));  // reaped by the destructor: no zombie left
}

TEST(SubprocessTest, WaitKillsWhatTheChildLeftInItsGroup) {
  auto p = StartOrDie({"sh", "-c", "sleep 300 & echo pid=$!"});
  ASSERT_NE(p, nullptr);
  auto line = p->WaitForLine("pid=", kLong);
  ASSERT_TRUE(line.ok()) << line.status().ToString();
  const pid_t grandchild = std::stoi(line->substr(4));
  auto code = p->Wait(kLong);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 0);
  EXPECT_TRUE(EventuallyGone(grandchild));
}

TEST(SubprocessTest, ChildDiesWithTheThreadThatStartedIt) {
  // PR_SET_PDEATHSIG fires when the starting thread exits; this is what kills children of a
  // crashed test process.
  std::unique_ptr<Subprocess> p;
  std::thread starter([&p] { p = StartOrDie({"sleep", "30"}); });
  starter.join();
  ASSERT_NE(p, nullptr);
  auto code = p->Wait(kLong);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, Subprocess::kSignalExitBase + SIGKILL);
}

TEST(TempDirTest, IsCreatedAndRemovedWithItsContent) {
  std::string path;
  {
    auto dir = TempDir::Create("chorus-tempdir-test");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    path = dir->path();
    EXPECT_TRUE(std::filesystem::is_directory(path));
    std::filesystem::create_directories(path + "/a/b");
    std::ofstream(path + "/a/b/file") << "data";
    TempDir moved = std::move(dir).value();
    EXPECT_EQ(moved.path(), path);
    EXPECT_TRUE(std::filesystem::exists(path + "/a/b/file"));
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(PortsTest, PickedPortCanBeListenedOnAndWaitedFor) {
  const int port = PickFreePort();
  ASSERT_GT(port, 0);
  EXPECT_EQ(WaitForTcpPort(port, milliseconds(0)).code(), StatusCode::kDeadlineExceeded);

  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  Status up = WaitForTcpPort(port, kLong);
  EXPECT_TRUE(up.ok()) << up.ToString();
  close(fd);
  Status down = WaitForTcpPort(port, milliseconds(30));
  EXPECT_EQ(down.code(), StatusCode::kDeadlineExceeded);
  EXPECT_THAT(down.message(), HasSubstr(std::to_string(port)));
}

}  // namespace
}  // namespace chorus::testing
