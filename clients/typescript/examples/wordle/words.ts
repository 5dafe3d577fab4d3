// Secret words of the tasks (lower case, 5 letters, no repeats).
export const WORDS: readonly string[] = `
  crane slate pious ghost flame brick plumb quirk vivid model earth ocean tiger zebra lemon mango
  piano radio storm cloud shine grape bread chair table glass house mouse horse river stone plant
  light night sound world water smile dream heart spice sugar candy crown frost globe hotel input
  joker knife laser metal noble orbit pearl quiet robin salad truck unity vapor whale yield zesty
`
  .trim()
  .split(/\s+/);
