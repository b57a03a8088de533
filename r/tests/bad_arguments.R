# Bad arguments are R errors naming the argument, raised before any worker
# starts. Prints one "<label>: <message>" line per bad call.
library("cmlray")
show <- function(label, expr) {
  message <- tryCatch({ expr; "no error" }, error = function(e) {
    paste0(if (inherits(e, "cmlray_error")) "[py] " else "[r] ", conditionMessage(e))
  })
  cat(label, ": ", message, "\n", sep = "")
}
show("cpu text", launch.workers(1, cpu = "a", memory = 1, code = "1"))
show("cpu vector", launch.workers(1, cpu = c(1, 2), memory = 1, code = "1"))
show("cpu negative", launch.workers(1, cpu = -1, memory = 1, code = "1"))
show("n zero", launch.workers(0, cpu = 1, memory = 1, code = "1"))
show("n fraction", launch.workers(1.5, cpu = 1, memory = 1, code = "1"))
show("memory NA", launch.workers(1, cpu = 1, memory = NA_real_, code = "1"))
show("kernel scala", launch.workers(1, cpu = 1, memory = 1, kernel = "scala", code = "1"))
show("no program", launch.workers(1, cpu = 1, memory = 1))
show("missing script", launch.workers(1, cpu = 1, memory = 1, script = "missing.R"))
show("env unnamed", launch.workers(1, cpu = 1, memory = 1, code = "1", env = list("x")))
show("env value", launch.workers(1, cpu = 1, memory = 1, code = "1", env = list(A = c(1, 2))))
show("env reserved", launch.workers(1, cpu = 1, memory = 1, code = "1",
                                    env = list(CDSW_ENGINE_ID = "x")))
show("unknown argument", launch.workers(1, cpu = 1, memory = 1, code = "1", colour = "red"))
show("too big", launch.workers(1, cpu = 1000, memory = 1, code = "1"))
show("await unknown", await.workers("0123456789abcdef"))
show("await flag", await.workers("0123456789abcdef", wait_for_completion = NA))
show("await timeout", await.workers("0123456789abcdef", timeout_seconds = -1))
show("stop number", stop.workers(42))
cat("workers:", length(list.workers()), "\n")
