import { Marked, type Tokens } from 'marked';
import type { Plugin } from 'vite';
import { defineConfig } from 'vitest/config';

const escapeHtml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** `foo.md` / `foo.md#part` (relative, same folder) → `foo.html` / `foo.html#part`. */
const rewriteDocLink = (href: string) => href.replace(/^(\.\/)?([A-Za-z0-9_-]+)\.md(#.*)?$/, '$2.html$3');

const isExternal = (href: string) => /^[a-z][a-z0-9+.-]*:/i.test(href) || href.startsWith('//');

/**
 * The user guide (docs/user-guide/*.md) rendered at build time into plain pages of the site:
 * `docs/<name>.html` plus one stylesheet, `docs/docs.css`. No inline style, no script, so the
 * pages run under the gateway's CSP (`style-src 'self'; script-src 'self'`).
 */
function userGuide(): Plugin {
  // Resolved against Vite's root (frontend/); Rollup's `this.fs` reads the files.
  let dir = '';
  return {
    name: 'stockpulse-user-guide',
    apply: 'build',
    configResolved(config) {
      dir = `${config.root.replace(/\/+$/, '')}/../docs/user-guide`;
    },
    async generateBundle() {
      const files = (await this.fs.readdir(dir)).filter((f) => f.endsWith('.md')).sort();
      if (!files.includes('index.md')) this.error(`${dir}/index.md is missing`);
      for (const file of files) {
        const name = file.slice(0, -'.md'.length);
        const path = `${dir}/${file}`;
        const markdown = await this.fs.readFile(path, { encoding: 'utf8' });
        let title = name;
        const marked = new Marked({
          gfm: true,
          renderer: {
            heading(this: { parser: { parseInline: (t: Tokens.Generic[]) => string } }, token: Tokens.Heading) {
              const text = this.parser.parseInline(token.tokens);
              const id = token.text
                .toLowerCase()
                .replace(/<[^>]*>/g, '')
                .replace(/[^a-z0-9 -]/g, '')
                .trim()
                .replace(/\s+/g, '-');
              if (token.depth === 1 && title === name) title = token.text;
              return `<h${token.depth} id="${id}">${text}</h${token.depth}>\n`;
            },
            link(this: { parser: { parseInline: (t: Tokens.Generic[]) => string } }, token: Tokens.Link) {
              const text = this.parser.parseInline(token.tokens);
              const href = rewriteDocLink(token.href);
              const titleAttr = token.title ? ` title="${escapeHtml(token.title)}"` : '';
              const rel = isExternal(href) ? ' rel="noopener noreferrer"' : '';
              return `<a href="${escapeHtml(href)}"${titleAttr}${rel}>${text}</a>`;
            },
            html() {
              // Raw HTML in the Markdown is dropped: it could carry inline style or script.
              return '';
            },
          },
        });
        const body = marked.parse(markdown, { async: false });
        const fullTitle = name === 'index' ? 'StockPulse Keys — User guide' : `${title} — StockPulse Keys user guide`;
        this.emitFile({
          type: 'asset',
          fileName: `docs/${name}.html`,
          source: page(fullTitle, name, body),
        });
      }
      this.emitFile({ type: 'asset', fileName: 'docs/docs.css', source: DOCS_CSS });
    },
  };
}

const NAV: [string, string][] = [
  ['index', 'Overview'],
  ['obtaining-keys', 'Obtaining keys'],
  ['managing-keys', 'Managing keys'],
  ['security', 'Security'],
  ['troubleshooting', 'Troubleshooting'],
];

function page(title: string, current: string, body: string): string {
  const nav = NAV.map(([n, label]) =>
    n === current ? `<li><a href="${n}.html" aria-current="page">${label}</a></li>` : `<li><a href="${n}.html">${label}</a></li>`,
  ).join('');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<link rel="stylesheet" href="docs.css">
</head>
<body>
<header class="docs-header">
<p><a href="/">← Back to API Key Management</a></p>
<nav aria-label="User guide"><ul>${nav}</ul></nav>
</header>
<main>
${body}</main>
<footer class="docs-footer"><p><a href="/">Back to the app</a> · <a href="index.html">User guide overview</a></p></footer>
</body>
</html>
`;
}

const DOCS_CSS = `:root { color-scheme: light dark; --fg: #1b1f24; --bg: #ffffff; --muted: #57606a; --line: #d0d7de; --accent: #0b5cad; --code-bg: #f3f5f7; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9da7b3; --line: #30363d; --accent: #6cb6ff; --code-bg: #161b22; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 52rem; padding: 1rem 1.25rem 3rem; font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--accent); }
a:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
.docs-header { border-bottom: 1px solid var(--line); padding-bottom: .5rem; margin-bottom: 1.5rem; }
.docs-header nav ul { list-style: none; padding: 0; margin: .25rem 0 0; display: flex; flex-wrap: wrap; gap: .25rem 1rem; }
.docs-header a[aria-current="page"] { font-weight: 600; text-decoration: none; color: var(--fg); }
.docs-footer { border-top: 1px solid var(--line); margin-top: 3rem; color: var(--muted); font-size: .9rem; }
h1, h2, h3, h4 { line-height: 1.25; margin: 1.75rem 0 .75rem; }
h1 { font-size: 2rem; margin-top: .5rem; }
h2 { font-size: 1.5rem; border-bottom: 1px solid var(--line); padding-bottom: .25rem; }
h3 { font-size: 1.2rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; background: var(--code-bg); padding: .1em .3em; border-radius: 4px; overflow-wrap: anywhere; }
pre { background: var(--code-bg); padding: .75rem 1rem; border-radius: 6px; overflow-x: auto; }
pre code { padding: 0; background: none; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; display: block; overflow-x: auto; }
th, td { border: 1px solid var(--line); padding: .4rem .6rem; text-align: left; vertical-align: top; }
th { background: var(--code-bg); }
blockquote { margin: 1rem 0; padding: .25rem 1rem; border-left: 4px solid var(--accent); color: var(--muted); }
li + li { margin-top: .25rem; }
`;

// Preact via esbuild's automatic JSX runtime (no extra plugin needed).
export default defineConfig({
  plugins: [userGuide()],
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
