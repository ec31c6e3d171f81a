// ESLint flat config: type-aware typescript-eslint over every TypeScript file of the repository
// (production code, test/, bench/, simulations/, scripts/). `npm run lint`; part of `npm test`.
// What it keeps: every promise handled (awaited, returned, .catch'ed, or `void` with a reason where
// fire-and-forget is meant), no promise where a plain callback is expected, no silent empty catch.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'test-output/', 'scratch/', 'coverage/', 'tmp/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      // An empty catch swallows an error without saying why: handle it, or comment why ignoring it is right.
      'no-empty': ['error', { allowEmptyCatch: false }],
      // `_name` marks a binding left unused on purpose (rest-destructuring to omit a field, a required parameter).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', ignoreRestSiblings: true }],
      // Matching control characters is the point of the sanitisers (util/text.ts) and ANSI handling here.
      'no-control-regex': 'off',
    },
  },
  {
    // Tests build deliberately malformed inputs and walk decoded JSON of any shape.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // Plain Node scripts (bin/fleet.js, the old-board probe).
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: {
      globals: { process: 'readonly', URL: 'readonly', console: 'readonly', Buffer: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', performance: 'readonly' },
    },
  },
);
