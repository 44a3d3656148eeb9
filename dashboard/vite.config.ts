import { defineConfig } from 'vite';

// The console is served by guruconnect-server at `/`; `npm run dev` proxies the API and
// the viewer WebSocket to a server on 127.0.0.1:3002.
export default defineConfig({
  base: '/',
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, target: 'es2022' },
  server: {
    proxy: {
      '/api': 'http://127.0.0.1:3002',
      '/health': 'http://127.0.0.1:3002',
      '/ws': { target: 'ws://127.0.0.1:3002', ws: true },
    },
  },
});
