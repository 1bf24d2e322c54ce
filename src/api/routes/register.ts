/**
 * What a route module exports: a function that adds its routes to the table.
 * Its own module, so the route files and the list of them (index.ts) do not
 * import each other.
 */
import type { RouteTable } from '../route-table.js';
import type { ApiContext } from '../context.js';

export type RegisterRoutes = (table: RouteTable, ctx: ApiContext) => void;
