import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Each file loads the model (~100 MB) and the machines have few cores: run files one at a
    // time, each in its own process, with timeouts generous enough for a slow CPU.
    pool: "forks",
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 300_000,
  },
});
