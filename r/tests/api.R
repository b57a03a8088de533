# The R functions round trip: worker lists, env forms, await, stop, and a
# Python worker launched from R (its environment free of R's LD_LIBRARY_PATH).
library("cmlray")

same <- function(actual, expected) {
  if (!identical(actual, expected)) {
    stop(sprintf("expected %s, got %s", deparse(expected), deparse(actual)), call. = FALSE)
  }
}

stopifnot(length(list.workers()) == 0L)
cmlray.init(num_cpus = 2)
again <- tryCatch(cmlray.init(), cmlray_SessionError = function(e) conditionMessage(e))
same(again, "cmlray.init: a cmlray session is already running: call cmlray.shutdown() first")
workers <- launch.workers(n = 2, cpu = 0.25, memory = 0.5,
                          code = 'cat(Sys.getenv("ANSWER"), Sys.getenv("CDSW_ENGINE_ID"), "\n")',
                          env = c(ANSWER = "42"))
same(length(workers), 2L)
same(vapply(workers, function(w) w$name, ""), c("worker-1", "worker-2"))
done <- await.workers(workers)
same(length(done$workers), 2L)
same(length(done$failures), 0L)
for (w in done$workers) {
  same(w$status, "succeeded")
  same(w$exit_code, 0L)
  same(w$tail, paste("42", w$id, ""))
}

named_list <- launch.workers(1, cpu = 0.25, memory = 0.5, code = 'cat(Sys.getenv("A"), "\n")',
                             env = list(A = 7), name = "listed")
same(named_list[[1]]$name, "listed")
same(await.workers(named_list[[1]]$id)$workers[[1]]$tail, "7 ")

python <- launch.workers(1, cpu = 0.25, memory = 0.5, kernel = "python3", code = paste(
  "import os, ssl, sys",
  "print('python', sys.version_info[:2] >= (3, 11), os.environ.get('LD_LIBRARY_PATH', ''))",
  sep = "\n"))
py <- await.workers(python)$workers[[1]]
same(py$tail, "python True ")

sleeper <- launch.workers(1, cpu = 0.25, memory = 0.5, code = "Sys.sleep(300)")
running <- await.workers(sleeper, wait_for_completion = FALSE)
same(length(running$workers), 1L)
pending <- await.workers(sleeper, timeout_seconds = 0.5)
same(pending$failures[[1]]$status, "running")
stopped <- stop.workers(sleeper, "0123456789abcdef")
same(vapply(stopped, function(s) s$status_code, 0L), c(200L, 404L))
same(stopped[[1]]$worker$status, "stopped")

same(length(list.workers()), 5L)
ignored <- withCallingHandlers(
  launch.workers(1, cpu = 0.25, memory = 0.5, script = "api.R", code = "1", name = "ignored"),
  warning = function(w) {
    stopifnot(grepl("code is ignored", conditionMessage(w)))
    cat("warned:", conditionMessage(w), "\n")
    invokeRestart("muffleWarning")
  })
stop.workers()
cmlray.shutdown()
same(length(list.workers()), 0L)
cat("api ok\n")
