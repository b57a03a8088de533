library("cmlray")
workers <- launch.workers(n=2, cpu=0.2, memory=0.5, env="", script="worker.r")
for(i in 1:2) {
  con <- socketConnection(host="0.0.0.0", port = 6000, blocking=TRUE, server=TRUE, open="r+")
  data <- readLines(con, 1)
  print(paste("Server received:", data))
  close(con)
}
