import { defineConfig } from 'vitest/config';

// Preact via esbuild's automatic JSX runtime (no extra plugin needed).
export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Never inline assets as data: URIs for scripts/styles; keep everything as same-origin files.
    assetsInlineLimit: 0,
    sourcemap: false,
    modulePreload: { polyfill: false },
  },
  test: {
    environment: 'node',
    include: ['src/**/*.test.ts'],
  },
});
