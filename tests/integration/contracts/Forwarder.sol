// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

interface IERC20Transfer {
    function transfer(address to, uint256 amount) external returns (bool);
}

/// @notice Moves received ETH on by internal calls, so deposits appear only in traces.
contract Forwarder {
    /// One internal CALL with value: trace path `0`.
    function forward(address payable to) public payable {
        (bool ok, ) = to.call{value: msg.value}("");
        require(ok, "forward failed");
    }

    /// Through another forwarder: the value reaches `to` at trace path `0.0`.
    function forwardVia(Forwarder next, address payable to) external payable {
        next.forward{value: msg.value}(to);
    }

    /// ETH to `to` (trace path `0`), then `amount` of `token` held by this contract
    /// (a Transfer log): one transaction, two deposits.
    function forwardWithToken(address payable to, IERC20Transfer token, uint256 amount)
        external
        payable
    {
        (bool ok, ) = to.call{value: msg.value}("");
        require(ok, "forward failed");
        require(token.transfer(to, amount), "token transfer failed");
    }
}
