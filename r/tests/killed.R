# An R session whose workers run process trees, left to be SIGKILLed.
# Prints its temp dir, then "ready" once every worker runs; then waits.
library("cmlray")
cat("tempdir", tempdir(), "\n")
tree <- 'system("sleep 300 | cat & setsid sleep 301 & sleep 303")'
workers <- launch.workers(n = 2, cpu = 0.25, memory = 0.5, code = tree)
python <- launch.workers(n = 1, cpu = 0.25, memory = 0.5, kernel = "python3",
                         code = "import time; time.sleep(302)")
running <- await.workers(c(workers, python), wait_for_completion = FALSE)
stopifnot(length(running$workers) == 3L)
cat("ready\n")
Sys.sleep(600)
